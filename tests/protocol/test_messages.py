"""The typed messages that cross HTTP: round trips through JSON, unknown keys
ignored (an older reader keeps working against a newer writer), and the body
of a run request, which leaves out what the server fills in."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from cast.protocol.messages import SERVER_FILLED, LogStream, MountSpec, RunSpec
from cast.protocol.worker_messages import (HeartbeatReply, HeldLease, Lease, LeaseMount, LeaseState, StatusReport,
                                           WorkerHeartbeat, WorkerHeartbeatReply, heartbeat_interval)
from cast.protocol.status import RunStatus


def full_spec() -> RunSpec:
    return RunSpec(
        command="python train.py", git_url="https://host/repo.git", commit_ref="main", commit_sha="a" * 40,
        code_bundle=None, code_digest="b" * 64, pip=["tqdm==4.66.1"], pip_req="numpy\n", apt=["curl"],
        docker_image="python:3.11-slim", mounts=[MountSpec("runs/1/out", "out"), MountSpec("uploads/ds", "ds")],
        machine_type="gpu:2", gpus=2, env={"SEED": "7"}, timeout=90.0, retries=2,
    )


def through_json(data: dict) -> dict:
    return json.loads(json.dumps(data))


def test_run_spec_round_trip():
    spec = full_spec()
    data = through_json(spec.to_dict())
    assert data["mounts"] == [{"resource": "runs/1/out", "path": "out"}, {"resource": "uploads/ds", "path": "ds"}]
    back = RunSpec.from_dict(data)
    assert back == spec and isinstance(back.mounts[0], MountSpec)
    assert RunSpec.from_dict(RunSpec(command="true").to_dict()) == RunSpec(command="true")


def test_run_spec_ignores_unknown_keys_and_fills_defaults():
    spec = RunSpec.from_dict({"command": "true", "priority": 5, "pip": None, "env": None, "mounts": None,
                              "apt": ["curl"]})
    assert spec == RunSpec(command="true", apt=["curl"])
    with_extra_mount_key = RunSpec.from_dict({"command": "x", "mounts": [{"resource": "runs/1", "path": "1",
                                                                           "kind": "dir"}]})
    assert with_extra_mount_key.mounts == [MountSpec("runs/1", "1")]


def test_run_spec_does_not_share_the_lists_it_was_read_from():
    data = {"command": "x", "pip": ["tqdm"], "env": {"A": "1"}}
    spec = RunSpec.from_dict(data)
    spec.pip.append("numpy")
    spec.env["B"] = "2"
    assert data == {"command": "x", "pip": ["tqdm"], "env": {"A": "1"}}


def test_request_body_leaves_out_what_the_server_fills_and_none():
    assert SERVER_FILLED == {"code_digest", "gpus"}
    body = full_spec().request_body(labels=["exp", "best"])
    assert not SERVER_FILLED & set(body)
    assert "commit_sha" not in body  # a git URL's commit is the server's to resolve
    assert body == {
        "command": "python train.py", "git_url": "https://host/repo.git", "commit_ref": "main",
        "pip": ["tqdm==4.66.1"], "pip_req": "numpy\n", "apt": ["curl"], "docker_image": "python:3.11-slim",
        "mounts": [{"resource": "runs/1/out", "path": "out"}, {"resource": "uploads/ds", "path": "ds"}],
        "machine_type": "gpu:2", "env": {"SEED": "7"}, "timeout": 90.0, "retries": 2, "labels": ["exp", "best"],
        "log_metrics": True,
    }
    plain = RunSpec(command="true").request_body()
    assert plain == {"command": "true", "pip": [], "apt": [], "mounts": [], "machine_type": "cpu", "env": {},
                     "retries": 0, "log_metrics": True}
    assert "labels" not in RunSpec(command="true").request_body(labels=[])


def test_a_bundle_run_sends_what_the_repository_was_on():
    spec = RunSpec(command="true", code_bundle="c" * 64, commit_sha="a" * 40, branch="main", dirty=True,
                   workdir="sub")
    body = spec.request_body(idempotent=True)
    assert {k: body[k] for k in ("commit_sha", "branch", "dirty", "workdir", "idempotent")} == {
        "commit_sha": "a" * 40, "branch": "main", "dirty": True, "workdir": "sub", "idempotent": True}
    assert "idempotent" not in spec.request_body()


def test_from_dict_reads_specs_stored_before_workdir_branch_and_dirty():
    old = RunSpec.from_dict({"command": "true", "code_bundle": "c" * 64, "unknown_later_field": 1})
    assert (old.workdir, old.branch, old.dirty) == (None, None, None)


def lease_data() -> dict:
    return {
        "run_id": 4, "lease_token": "tok", "lease_seconds": 30.0, "attempt": 1,
        "spec": full_spec().to_dict(),
        "mounts": [{"resource": "runs/1/out", "path": "out", "kind": "dir", "local_path": "/data/runs/1/out"}],
        "storage_root": "/data", "storage_id": "abc",
    }


def test_lease_round_trip():
    lease = Lease.from_dict(through_json(lease_data()))
    assert isinstance(lease.spec, RunSpec) and lease.spec == full_spec()
    assert lease.mounts == [LeaseMount("runs/1/out", "out", "dir", "/data/runs/1/out")]
    assert Lease.from_dict(through_json(lease.to_dict())) == lease


def test_lease_ignores_unknown_keys_at_every_level():
    data = lease_data()
    data["granted_by"] = "server 2"
    data["spec"]["priority"] = 1
    data["mounts"][0]["checksum"] = "c"
    lease = Lease.from_dict(data)
    assert lease == Lease.from_dict(lease_data())


def test_heartbeat_reply():
    reply = HeartbeatReply.from_dict({"status": "stopping", "lease_expires_at": "2026-01-02T03:04:05+00:00",
                                      "extra": 1})
    assert reply.status is RunStatus.STOPPING
    assert reply.lease_expires_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert HeartbeatReply.from_dict({"status": "running"}).lease_expires_at is None
    with pytest.raises(ValueError):
        HeartbeatReply.from_dict({"status": "sleeping"})


def test_a_worker_heartbeat_and_its_reply():
    assert WorkerHeartbeat([HeldLease(7, "t7")]).to_dict() == {"leases": [{"run_id": 7, "lease_token": "t7"}]}
    reply = WorkerHeartbeatReply.from_dict({"leases": [{"run_id": 7, "lost": False, "status": "killing"},
                                                       {"run_id": 8, "lost": True, "status": None, "extra": 1}],
                                            "lease_expires_at": "2026-01-02T03:04:05+00:00"})
    assert reply.leases == [LeaseState(7, lost=False, status=RunStatus.KILLING), LeaseState(8, lost=True)]
    assert reply.lease_expires_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert WorkerHeartbeatReply.from_dict({"leases": [], "lease_expires_at": None}) == WorkerHeartbeatReply()


def test_the_heartbeat_interval_is_a_third_of_the_lease_and_at_most_a_second():
    assert heartbeat_interval(15) == 1.0  # stop and kill travel on the answer
    assert heartbeat_interval(2) == pytest.approx(2 / 3)
    assert heartbeat_interval(0.01) == 0.05


def test_status_report_bodies_and_log_stream_names():
    assert StatusReport("tok", RunStatus.FAILED, exit_code=3).to_dict() == {
        "lease_token": "tok", "status": "failed", "exit_code": 3}
    assert StatusReport("tok", RunStatus.COMPLETE, exit_code=0, note="").to_dict() == {
        "lease_token": "tok", "status": "complete", "note": "", "exit_code": 0}
    assert str(LogStream.STDOUT) == "stdout" and LogStream("cast") is LogStream.CAST
