"""The object store's tests: one real SeaweedFS for the session (its files
removed at the end, pass or fail), a fresh bucket for each test, the
`server` of the shared fixtures started on it, and an in-process app on it
(`settings`, `app`, `local`; a module needing other settings overrides
`settings` with `s3_settings(**fields)`), and a fault proxy in front of the
store (`proxy`; a server started on `proxied_s3_env` sits behind it)."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cast.server.app import create_app
from cast.server.settings import Settings
from tests.realservers.faultproxy import FaultProxy
from tests.realservers.seaweed import SeaweedServer
from tests.server.conftest import in_process_api

_buckets = itertools.count()


@pytest.fixture(scope="session")
def seaweed():
    root = Path(tempfile.mkdtemp(prefix="cast-test-s3-"))
    server = SeaweedServer(root)
    try:
        yield server.start()
    finally:
        server.kill()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def bucket(seaweed) -> str:
    name = f"cast-test-{os.getpid()}-{next(_buckets)}"
    seaweed.create_bucket(name)
    return name


@pytest.fixture
def s3_env(seaweed, bucket) -> dict:
    return seaweed.env(bucket, prefix="cast")


@pytest.fixture
def s3_settings(tmp_path, s3_env, monkeypatch):
    """Settings on this test's bucket, with the given fields; its environment
    set too, for the code that reads the store's credentials from it."""
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)

    def make(**fields) -> Settings:
        return Settings(data_dir=tmp_path / "data", storage_url=s3_env["CAST_STORAGE_URL"], **fields)

    return make


@pytest.fixture
def settings(s3_settings) -> Settings:
    return s3_settings()


@pytest.fixture
def app(settings):
    app = create_app(settings)
    yield app
    app.state.database.dispose()


@pytest.fixture
def local(app, settings):
    return in_process_api(app, settings)


@pytest.fixture
def server(start_server, s3_env):
    return start_server(env=s3_env)


@pytest.fixture
def proxy(seaweed):
    """A fault proxy in front of the store (tests/realservers/faultproxy.py)."""
    target = urlsplit(seaweed.endpoint)
    with FaultProxy((target.hostname, target.port)) as started:
        yield started


@pytest.fixture
def proxied_s3_env(s3_env, proxy) -> dict:
    """`s3_env` with the store reached through `proxy`: a server started on it
    signs URLs for the proxy's address, so the PUTs of the CLI and the worker cross it."""
    return {**s3_env, "AWS_ENDPOINT_URL": proxy.url}


@pytest.fixture
def store(s3_env, monkeypatch):
    """The server's ObjectStore, made in this process with the server's settings."""
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    from cast.server.services.objectstore import ObjectStore

    return ObjectStore(s3_env["CAST_STORAGE_URL"], presign_seconds=600)
