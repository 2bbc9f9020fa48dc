"""cast.server.api.files: stored bytes answered as a file (under its own
name) or a folder as a streamed tar (named after the folder)."""

from __future__ import annotations

import io
import tarfile

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cast.server.api.files import file_or_tar
from cast.server.errors import PathNotFound


@pytest.fixture
def client(tmp_path):
    root = tmp_path / "stored"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / "a.txt").write_bytes(b"a" * 70_000)
    (root / "sub" / "deeper" / "b.bin").write_bytes(b"b")
    (root / "top.txt").write_bytes(b"top")
    app = FastAPI()

    @app.get("/files/{name:path}")
    def get(name: str):
        return file_or_tar(root / name, name=name)

    with TestClient(app) as client:
        yield client


def test_a_file_is_answered_as_itself_under_its_base_name(client):
    answer = client.get("/files/sub/a.txt")
    assert answer.content == b"a" * 70_000
    assert answer.headers["content-type"] == "application/octet-stream"
    assert 'filename="a.txt"' in answer.headers["content-disposition"]


def test_a_folder_is_answered_as_a_tar_of_its_contents_named_after_it(client):
    answer = client.get("/files/sub/")
    assert answer.headers["content-type"] == "application/x-tar"
    assert answer.headers["content-disposition"] == 'attachment; filename="sub.tar"'
    with tarfile.open(fileobj=io.BytesIO(answer.content)) as archive:
        assert archive.getnames() == ["deeper", "a.txt", "deeper/b.bin"]
        assert archive.extractfile("deeper/b.bin").read() == b"b"
    whole = client.get("/files/")
    assert whole.headers["content-disposition"] == 'attachment; filename="folder.tar"'


def test_a_missing_path_is_not_found_by_the_name_asked(tmp_path):
    with pytest.raises(PathNotFound, match="runs/3/missing.txt not found"):
        file_or_tar(tmp_path / "missing.txt", name="runs/3/missing.txt")
