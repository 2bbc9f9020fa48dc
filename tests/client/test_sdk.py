"""cast.client.sdk against a real server (and worker where a run must run):
URLs and tokens checked before any request, error answers turned into
ApiError with the server's reason, network failures into Unreachable, a
stale keep-alive connection retried, streamed uploads and downloads, code
bundles by key, and a log followed to its end."""

from __future__ import annotations

import tarfile

import pytest

from cast.client.sdk import ApiError, CastError, Client, Unreachable, _detail_of
from cast.client.tarstream import tar_chunks
from cast.protocol.messages import LogStream, RunSpec
from tests.conftest import free_port


@pytest.mark.parametrize("url", ["127.0.0.1:8750", "ftp://host:21", "http://:8750", "http://host:port",
                                 "http://host:99999"])
def test_urls_that_name_no_server_are_refused(url):
    with pytest.raises(CastError, match="must look like http://HOST:PORT"):
        Client(url, "token")


@pytest.mark.parametrize("token", ["two words", "tab\there", "naïve", "line\n"])
def test_tokens_no_header_can_carry_are_refused(token):
    with pytest.raises(CastError, match="characters no cast token has"):
        Client("http://127.0.0.1:8750", token)


def test_error_details_are_read_from_any_answer():
    assert _detail_of(404, "Not Found", b'{"detail": "no run 7"}') == "no run 7"
    listed = b'{"detail": [{"loc": ["body", "spec", "gpus"], "msg": "too many"}, {"loc": ["body"], "msg": "bad"}, "x"]}'
    assert _detail_of(422, "Unprocessable", listed) == "spec.gpus: too many; body: bad; x"
    assert _detail_of(502, "Bad Gateway", b"<html>proxy down</html>") == "HTTP 502 Bad Gateway: <html>proxy down</html>"
    assert _detail_of(500, "Internal Server Error", b"") == "HTTP 500 Internal Server Error"
    assert _detail_of(400, "Bad Request", b'{"detail": null}') == "HTTP 400 Bad Request: {\"detail\": null}"


def test_calls_and_their_refusals(server):
    client = Client(server.url + "/api/v1/", server.admin_token)  # a URL copied with the API prefix works too
    assert client.health()["status"] == "ok"
    run = client.create_run(RunSpec(command="echo hi"), labels=["first"])
    assert client.get_run(run["id"])["spec"]["command"] == "echo hi"
    assert client.add_label(run["id"], "v1.0:b-c")["labels"] == ["first", "v1.0:b-c"]
    assert client.remove_label(run["id"], "first")["labels"] == ["v1.0:b-c"]
    assert [r["id"] for r in client.list_runs(status=["machine_requested", "running"], label=None)["runs"]] == [run["id"]]
    assert client.list_runs(status=["failed"])["runs"] == []

    with pytest.raises(ApiError) as missing:
        client.get_run(run["id"] + 100)
    assert missing.value.status == 404 and str(run["id"] + 100) in missing.value.detail
    with pytest.raises(ApiError) as invalid:
        client.create_run(RunSpec(command="echo hi", machine_type="tpu-9000"))
    assert invalid.value.status == 400 and invalid.value.detail.startswith("machine_type: machine type")
    with pytest.raises(ApiError) as stranger:
        Client(server.url, "not-a-token").whoami()
    assert stranger.value.status == 401


def test_an_unreachable_server_and_a_restarted_one(start_server, tmp_path):
    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(Unreachable, match=f"cannot reach the cast server at {nobody}: connection refused"):
        Client(nobody, "token").health()

    server = start_server()
    client = Client(server.url, server.admin_token)
    assert client.whoami()["name"] == "admin"
    server.stop()
    with pytest.raises(Unreachable):
        client.whoami()
    server.start()
    assert client.whoami()["name"] == "admin"
    server.stop()
    server.start()
    assert client.whoami()["name"] == "admin"  # the kept connection went stale: retried on a new one


def test_uploads_stream_both_ways(server, tmp_path):
    client = Client(server.url, server.admin_token)
    payload = bytes(range(256)) * 4096
    stored = client.upload("weights.bin", "file", iter([payload[:1000], payload[1000:]]))
    assert stored["name"] == "weights.bin"
    with client.download_upload("weights.bin") as download:
        assert download.length == len(payload)
        assert b"".join(download.chunks(size=4096)) == payload

    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a b.txt").write_text("spaced")
    members = [(str(folder / "sub"), "sub"), (str(folder / "sub" / "a b.txt"), "sub/a b.txt")]
    client.upload("my data", "dir", tar_chunks(members, follow_symlinks=False))
    assert "my data" in [upload["name"] for upload in client.list_uploads()["uploads"]]
    listed = client.list_upload("my data", "sub")
    assert "a b.txt" in str(listed)
    with client.download_upload("my data", "sub/a b.txt") as download:
        assert download.read() == b"spaced"
    with client.download_upload("my data") as download:
        assert download.content_type == "application/x-tar"
        with tarfile.open(fileobj=download, mode="r|") as archive:
            assert {member.name for member in archive} >= {"sub", "sub/a b.txt"}
    with pytest.raises(ApiError) as missing:
        client.download_upload("nothing-here")
    assert missing.value.status == 404


def test_code_bundles_are_stored_once_by_key(server, tmp_path):
    client = Client(server.url, server.admin_token)
    (tmp_path / "train.py").write_text("print(1)\n")
    key = "ab" * 32
    assert client.has_code(key) is False
    client.put_code(key, tar_chunks([(str(tmp_path / "train.py"), "train.py")], follow_symlinks=False))
    assert client.has_code(key) is True
    with pytest.raises(ApiError):
        client.has_code("not-a-key")


def test_a_log_is_followed_to_its_end(server, worker):
    client = Client(server.url, server.admin_token)
    run = client.create_run(RunSpec(command="echo one; echo two"))
    pages = list(client.follow_logs(run["id"]))
    assert pages[-1].finished is True
    job_lines = [line for page in pages for chunk in page.chunks if chunk.stream is LogStream.STDOUT
                 for line in chunk.lines]
    assert job_lines == ["one", "two"]
    read = client.get_logs(run["id"])
    assert [line for chunk in read.chunks if chunk.stream is LogStream.STDOUT for line in chunk.lines] == job_lines
    assert [page.line_count for page in client.log_pages(run["id"], 1)] == [read.line_count - 1, 0]
    with client.download_logs(run["id"]) as download:
        assert b"one" in download.read()
    with pytest.raises(ApiError) as missing:
        next(client.follow_logs(run["id"] + 100))
    assert missing.value.status == 404
