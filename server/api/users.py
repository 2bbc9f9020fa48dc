"""User and token routes: who am I, users (admin), tokens (create, list, revoke),
one-time sign-in links for the web viewer and their exchange (public)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from cast.server.api.deps import CurrentUser, SessionDep, SessionRoute
from cast.server.models import MAX_INTEGER
from cast.server.schemas.users import (SignedIn, SignInIn, SignInLink, TokenCreate, TokenCreated, TokenList, TokenOut,
                                       UserCreate, UserCreated, UserList, UserOut)
from cast.server.services import users

router = APIRouter(tags=["users"], route_class=SessionRoute)


def _user(user) -> dict:
    return {"name": user.name, "admin": user.is_admin, "created_at": user.created_at}


def _token(token, user_name: str | None, secret: str | None = None) -> dict:
    view = {"id": token.id, "kind": token.kind, "user": user_name, "name": token.name,
            "created_at": token.created_at, "revoked_at": token.revoked_at}
    return view if secret is None else {**view, "token": secret}


@router.get("/users/me", response_model=UserOut)
def whoami(user: CurrentUser) -> dict:
    return _user(user)


@router.post("/users/me/sign-in-links", status_code=201, response_model=SignInLink)
def create_sign_in_link(user: CurrentUser, session: SessionDep) -> dict:
    token, secret = users.create_sign_in_link(session, viewer=user)
    return {"token": secret, "path": f"/#sign-in={secret}", "expires_at": token.expires_at}


@router.post("/sign-in", response_model=SignedIn)
def sign_in(body: SignInIn, session: SessionDep) -> dict:
    user, _token, secret = users.redeem_sign_in_link(session, secret=body.token)
    return {"token": secret, "user": _user(user)}


@router.get("/users", response_model=UserList)
def list_users(user: CurrentUser, session: SessionDep) -> dict:
    return {"users": [_user(u) for u in users.list_users(session, viewer=user)]}


@router.post("/users", status_code=201, response_model=UserCreated)
def create_user(body: UserCreate, user: CurrentUser, session: SessionDep) -> dict:
    created, token, secret = users.create_user(session, viewer=user, name=body.name, admin=body.admin)
    return {**_user(created), "token": _token(token, created.name, secret)}


@router.get("/tokens", response_model=TokenList)
def list_tokens(user: CurrentUser, session: SessionDep) -> dict:
    return {"tokens": [_token(t, name) for t, name in users.list_tokens(session, viewer=user)]}


@router.post("/tokens", status_code=201, response_model=TokenCreated)
def create_token(body: TokenCreate, user: CurrentUser, session: SessionDep) -> dict:
    token, secret = users.create_token(session, viewer=user, kind=body.kind, name=body.name, user_name=body.user)
    owner = None if body.kind == "worker" else (body.user or user.name)
    return _token(token, owner, secret)


@router.delete("/tokens/{token_id}", response_model=TokenOut)
def revoke_token(token_id: Annotated[int, Path(ge=1, le=MAX_INTEGER)], user: CurrentUser,
                 session: SessionDep) -> dict:
    token, owner = users.revoke_token(session, viewer=user, token_id=token_id)
    return _token(token, owner)
