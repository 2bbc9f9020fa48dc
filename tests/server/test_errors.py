"""cast.server.errors: one-sentence messages, and which filesystem errors a
request caused (a 4xx) or no retry can cure (a permanent 507)."""

from __future__ import annotations

import errno

import pytest

from cast.server import errors


def test_messages_name_what_was_not_found_or_conflicts():
    assert str(errors.RunNotFound(7)) == "run 7 not found"
    assert str(errors.UploadNotFound("data")) == "upload 'data' not found"
    assert str(errors.WorkerNotFound("w-1")) == "worker 'w-1' not found; register again"
    assert str(errors.InvalidTransition(3, "complete", "running")) == "run 3 is complete; it cannot become running"
    assert isinstance(errors.LeaseLost(1), errors.Conflict) and isinstance(errors.CodeNotFound("k"), errors.NotFound)


def test_only_a_full_disk_is_permanent():
    assert errors.StorageFull.permanent and str(errors.StorageFull()) == "server storage full"
    assert not errors.ShuttingDown.permanent and not errors.DomainError.permanent


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_or_quota_is_storage_full(code):
    assert isinstance(errors.from_os_error(OSError(code, "full", "/data/runs/1/x")), errors.StorageFull)


def test_names_the_filesystem_cannot_store_are_bad_requests_naming_only_the_last_part():
    too_long = errors.from_os_error(OSError(errno.ENAMETOOLONG, "long", "/srv/cast/tmp/" + "x" * 300))
    assert isinstance(too_long, errors.BadRequest)
    assert str(too_long) == f"{'x' * 300!r} is too long a name or path for the server's filesystem"
    assert "/srv" not in str(too_long)
    unstorable = errors.from_os_error(OSError(errno.EILSEQ, "bad", b"/srv/caf\xe9"))
    assert str(unstorable) == "'caf\\udce9' is not a name the server's filesystem can store"
    unnamed = errors.from_os_error(OSError(errno.ENAMETOOLONG, "long"))
    assert str(unnamed).startswith("'a name' is too long")


@pytest.mark.parametrize("code", [errno.EACCES, errno.EIO, errno.ENOENT])
def test_other_filesystem_errors_are_the_servers_own(code):
    assert errors.from_os_error(OSError(code, "x", "/data/f")) is None
