"""Users and bearer tokens.

Owns authentication (a token is looked up by its sha256; the secret itself is
never stored; who a valid token is, `Bearer`, is remembered until a
revocation anywhere, `Tokens`), the bootstrap of an empty database (an admin user plus one user
token and one worker token, written 0600 into the data dir), creating,
listing and revoking tokens and users, and one-time sign-in links (a token of
kind "sign-in" that expires within minutes, is never a bearer token, and is
spent once for a new user token named "web sign-in").
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.orm import Session

from cast.server import events
from cast.server.errors import Forbidden, NameTaken, NotAuthenticated, TokenNotFound, TooMany, UserNotFound
from cast.server.models import Token, User, utcnow
from cast.server.services import unique
from cast.server.settings import Settings

ADMIN_NAME = "admin"
SIGN_IN = "sign-in"  # the kind of a one-time sign-in link's token
SIGN_IN_SECONDS = 300
# Unused, unexpired links a user may hold at once: each is a row until it expires.
MAX_OPEN_SIGN_IN_LINKS = 20
WEB_TOKEN_NAME = "web sign-in"


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _new_token(session: Session, *, kind: str, user: User | None, name: str) -> tuple[Token, str]:
    secret = f"cast_{kind[0]}_{secrets.token_urlsafe(32)}"
    token = Token(token_hash=hash_token(secret), kind=kind, user_id=user.id if user else None, name=name)
    session.add(token)
    session.flush()
    return token, secret


def _write_secret(path: Path, secret: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(secret + "\n")
    os.replace(tmp, path)


def bootstrap(session: Session, *, settings: Settings) -> bool:
    """On an empty database: make the admin, its token and a worker token; True if it did."""
    if session.scalar(select(exists().where(User.id.is_not(None)))):
        return False
    admin = User(name=ADMIN_NAME, is_admin=True)
    session.add(admin)
    session.flush()
    _, admin_secret = _new_token(session, kind="user", user=admin, name="bootstrap")
    _, worker_secret = _new_token(session, kind="worker", user=None, name="bootstrap")
    # Written before the caller commits: if writing fails, the next start bootstraps again.
    _write_secret(settings.admin_token_file, admin_secret)
    _write_secret(settings.worker_token_file, worker_secret)
    return True


@dataclass(frozen=True, slots=True)
class Viewer:
    """A token's user as a request sees it: plain values, kept between requests
    (services read `id`, `name` and `is_admin` of it as of a `User`)."""

    id: int
    name: str
    is_admin: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Bearer:
    """Who a valid bearer token is: the token's id and kind, and its user (none for a worker token)."""

    token_id: int
    kind: str
    user: Viewer | None


def authenticate(session: Session, *, secret: str) -> Bearer:
    token = session.scalar(select(Token).where(Token.token_hash == hash_token(secret)))
    if token is None:
        raise NotAuthenticated("unknown token")
    if token.kind == SIGN_IN:
        raise NotAuthenticated("a sign-in link is not a token: open it in a browser")
    if token.revoked_at is not None:
        raise NotAuthenticated("token revoked")
    user = session.get(User, token.user_id) if token.user_id is not None else None
    viewer = Viewer(id=user.id, name=user.name, is_admin=user.is_admin, created_at=user.created_at) if user else None
    return Bearer(token_id=token.id, kind=token.kind, user=viewer)


class Tokens:
    """Valid tokens, user and worker alike, by their sha256: who each is.

    A worker makes several requests a second and a user's submit should cost
    no transaction for its token, so a token found valid is answered from
    memory afterwards. A revocation is never late: revoking commits a
    `events.token_key`, which every process hears (its own at commit, others
    by NOTIFY) and which moves the notifier's generation; an entry is used only
    under the generation `Notifier.caught_up` gives, the one after every change
    committed before the request came was heard. A change made behind the
    server's back (SQL by hand) holds within `MAX_AGE` seconds. Unknown and
    refused tokens are not remembered: each is looked up again."""

    MAX_AGE = 60.0
    MAX_ENTRIES = 4096  # valid tokens in use are few; the bound is against a surprise

    def __init__(self, notifier: events.Notifier) -> None:
        self._notifier = notifier
        self._lock = threading.Lock()
        self._known: dict[str, tuple[int, float, Bearer]] = {}  # digest: generation, when, bearer

    def generation(self) -> int:
        """Read before looking a token up, for `remember`: a revocation heard
        after this moves it, and one committed before the lookup is seen by it."""
        return self._notifier.generation

    async def get(self, digest: str) -> Bearer | None:
        found = self._known.get(digest)
        if found is None or time.monotonic() - found[1] > self.MAX_AGE:
            return None
        if await self._notifier.caught_up() != found[0]:
            return None
        return found[2]

    def remember(self, digest: str, bearer: Bearer, generation: int) -> None:
        """Keep `bearer`, found valid by a lookup begun at `generation`, unless
        something was revoked (or may have been) since the lookup began."""
        with self._lock:
            if generation != self.generation():
                return
            if len(self._known) >= self.MAX_ENTRIES:
                self._known.clear()
            self._known[digest] = (generation, time.monotonic(), bearer)


def _user_named(session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise UserNotFound(name)
    return user


def _require_admin(viewer: User, action: str) -> None:
    if not viewer.is_admin:
        raise Forbidden(f"only an admin may {action}")


def list_users(session: Session, *, viewer: User) -> list[User]:
    _require_admin(viewer, "list users")
    return list(session.scalars(select(User).order_by(User.id)))


def create_user(session: Session, *, viewer: User, name: str, admin: bool) -> tuple[User, Token, str]:
    _require_admin(viewer, "create users")
    if session.scalar(select(exists().where(User.name == name))):
        raise NameTaken(f"user {name!r} already exists")
    user = User(name=name, is_admin=admin)
    if not unique.insert_once(session, user):  # another replica made it since
        raise NameTaken(f"user {name!r} already exists")
    token, secret = _new_token(session, kind="user", user=user, name="initial")
    return user, token, secret


def create_token(session: Session, *, viewer: User, kind: str, name: str, user_name: str | None) -> tuple[Token, str]:
    if kind == "worker":
        _require_admin(viewer, "create worker tokens")
        owner = None
    elif user_name is not None and user_name != viewer.name:
        _require_admin(viewer, "create tokens for other users")
        owner = _user_named(session, user_name)
    else:
        owner = viewer
    return _new_token(session, kind=kind, user=owner, name=name)


def list_tokens(session: Session, *, viewer: User) -> list[tuple[Token, str | None]]:
    query = (select(Token, User.name).outerjoin(User, Token.user_id == User.id)
             .where(Token.kind != SIGN_IN).order_by(Token.id))
    if not viewer.is_admin:
        query = query.where(Token.user_id == viewer.id)
    return [(token, user_name) for token, user_name in session.execute(query)]


def create_sign_in_link(session: Session, *, viewer: User) -> tuple[Token, str]:
    """A one-time secret that signs a browser in as `viewer` within SIGN_IN_SECONDS."""
    now = utcnow()
    mine = (Token.kind == SIGN_IN, Token.user_id == viewer.id)
    # Used and expired links are of no more use: each new one sweeps its owner's.
    session.execute(delete(Token).where(*mine, (Token.revoked_at.is_not(None)) | (Token.expires_at <= now)))
    open_links = session.scalar(select(func.count()).select_from(Token).where(*mine))
    if open_links >= MAX_OPEN_SIGN_IN_LINKS:
        raise TooMany(f"{open_links} sign-in links are still open; use one or wait {SIGN_IN_SECONDS // 60} minutes")
    token, secret = _new_token(session, kind=SIGN_IN, user=viewer, name="sign-in link")
    token.expires_at = now + timedelta(seconds=SIGN_IN_SECONDS)
    session.flush()
    return token, secret


def redeem_sign_in_link(session: Session, *, secret: str) -> tuple[User, Token, str]:
    """Spend a sign-in link, once: a new user token for the browser."""
    link = session.scalar(select(Token).where(Token.token_hash == hash_token(secret), Token.kind == SIGN_IN))
    again = "run `cast web` for a new one"
    if link is None:
        raise NotAuthenticated(f"this sign-in link is not valid; {again}")
    if link.revoked_at is not None:
        raise NotAuthenticated(f"this sign-in link was already used; {again}")
    now = utcnow()
    if link.expires_at is None or link.expires_at <= now:
        raise NotAuthenticated(f"this sign-in link expired; {again}")
    # Conditional, so two browsers racing for one link get one token between them.
    spent = session.execute(update(Token).where(Token.id == link.id, Token.revoked_at.is_(None))
                            .values(revoked_at=now).execution_options(synchronize_session=False))
    if spent.rowcount != 1:
        raise NotAuthenticated(f"this sign-in link was already used; {again}")
    user = session.get(User, link.user_id)
    token, token_secret = _new_token(session, kind="user", user=user, name=WEB_TOKEN_NAME)
    return user, token, token_secret


def revoke_token(session: Session, *, viewer: User, token_id: int) -> tuple[Token, str | None]:
    token = session.get(Token, token_id)
    # A sign-in link is not a token of this API (the listing leaves them out): it expires on its own.
    if token is None or token.kind == SIGN_IN or not (viewer.is_admin or token.user_id == viewer.id):
        raise TokenNotFound(token_id)
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session.flush()
        events.changed(session, events.token_key(token.id))
    owner = session.get(User, token.user_id) if token.user_id is not None else None
    return token, owner.name if owner else None
