"""cast.server.services.code: bundles stored once per owner and key, by the
digest of their bytes, checked as they are received, and found by key (for
their owner) or by digest (for workers)."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from cast.server.errors import BadRequest, CodeNotFound, TooLarge
from cast.server.services import code
from ..conftest import make_tar
from .conftest import add_user, admin_of

KEY = "a" * 64


def _store(app, settings, owner, body: bytes, key: str = KEY) -> bool:
    return code.store(app.state.database, settings=settings, owner=owner, key=key, source=io.BytesIO(body))


def test_a_bundle_is_stored_by_digest_once_per_owner_and_key(app, settings):
    database = app.state.database
    admin, alice = admin_of(database), add_user(database, "alice")
    mine, theirs = make_tar({"train.py": b"print('mine')\n"}), make_tar({"train.py": b"print('theirs')\n"})
    assert _store(app, settings, admin, mine) is True
    assert _store(app, settings, admin, theirs) is False  # the key is taken: the body is ignored
    assert _store(app, settings, alice, theirs) is True
    with database.transaction(write=False) as session:
        assert code.exists(session, owner=admin, key=KEY) and not code.exists(session, owner=admin, key="b" * 64)
        bundle = code.find(session, owner=admin, key=KEY)
        assert (bundle.digest, bundle.size) == (hashlib.sha256(mine).hexdigest(), len(mine))
        assert code.owned_path(session, settings=settings, owner=admin, key=KEY).read_bytes() == mine
        assert code.owned_path(session, settings=settings, owner=alice, key=KEY).read_bytes() == theirs
        by_digest = code.path_by_digest(session, settings=settings, digest=hashlib.sha256(theirs).hexdigest())
        assert by_digest.read_bytes() == theirs
        with pytest.raises(CodeNotFound, match=f"code bundle {'b' * 64} not found"):
            code.find(session, owner=admin, key="b" * 64)
        with pytest.raises(CodeNotFound):
            code.path_by_digest(session, settings=settings, digest="c" * 64)
    assert list(settings.tmp_dir.iterdir()) == []


def test_the_same_bytes_under_two_owners_share_one_file(app, settings):
    database = app.state.database
    admin, alice = admin_of(database), add_user(database, "alice")
    body = make_tar({"a.py": b"a"})
    assert _store(app, settings, admin, body) and _store(app, settings, alice, body, key="d" * 64)
    assert [p.name for p in settings.code_dir.rglob("*") if p.is_file()] == [hashlib.sha256(body).hexdigest() + ".tar"]


def _link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


@pytest.mark.parametrize(("body", "refusal"), [
    (b"garbage" * 100, "not a tar"),
    (make_tar({}, extra=[_link("evil", "/etc")]), "links and devices are refused"),
    (make_tar({"../escape.py": b"x"}), "escapes its root"),
], ids=["not a tar", "a link", "a dotdot name"])
def test_a_bundle_a_worker_could_not_extract_safely_is_refused_and_not_kept(app, settings, body, refusal):
    admin = admin_of(app.state.database)
    with pytest.raises(BadRequest, match=refusal):
        _store(app, settings, admin, body)
    with app.state.database.transaction(write=False) as session:
        assert not code.exists(session, owner=admin, key=KEY)
    assert list(settings.tmp_dir.iterdir()) == [] and not any(settings.code_dir.rglob("*.tar"))


def test_a_bundle_over_the_cap_is_refused(app, settings):
    small = settings.model_copy(update={"max_code_bytes": 1024})
    admin = admin_of(app.state.database)
    with pytest.raises(TooLarge, match="code bundle exceeds the limit of 1024 bytes"):
        _store(app, small, admin, make_tar({"big.bin": b"x" * 4096}))
    with app.state.database.transaction(write=False) as session:
        assert not code.exists(session, owner=admin, key=KEY)
