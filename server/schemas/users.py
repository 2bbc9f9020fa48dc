"""Users and their tokens, and the web viewer's sign-in link."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from cast.server.schemas._base import _In


class UserOut(BaseModel):
    name: str
    admin: bool
    created_at: datetime


class UserList(BaseModel):
    users: list[UserOut]


# What a token is for: a user's requests or a worker's (a sign-in link's is never listed).
TokenKind = Literal["user", "worker"]

_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class UserCreate(_In):
    name: str = Field(max_length=64)
    admin: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _USER_NAME.match(value):
            raise ValueError(f"user name {value!r} must be 1-64 letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit")
        return value


class TokenCreate(_In):
    kind: TokenKind = "user"
    name: str = Field(default="", max_length=200)
    # Admins may make a token for another user; defaults to the caller.
    user: str | None = Field(default=None, max_length=64)


class TokenOut(BaseModel):
    id: int
    kind: TokenKind
    user: str | None
    name: str
    created_at: datetime
    revoked_at: datetime | None


class TokenCreated(TokenOut):
    token: str


class TokenList(BaseModel):
    tokens: list[TokenOut]


class UserCreated(UserOut):
    token: TokenCreated


class SignInLink(BaseModel):
    # The one-time secret; the viewer takes it at `path` (a fragment, kept out of server logs).
    token: str
    path: str
    expires_at: datetime


class SignInIn(_In):
    token: str = Field(min_length=1, max_length=256)


class SignedIn(BaseModel):
    # A new user token (named "web sign-in") for the browser to keep.
    token: str
    user: UserOut
