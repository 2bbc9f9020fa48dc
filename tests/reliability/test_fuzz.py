"""Fuzzing the HTTP API with schemathesis, from the server's own OpenAPI document.

Every operation of `/api/v1/openapi.json` on a real server gets generated
requests, valid ones (positive mode) and invalid ones (negative mode), with
the admin token on user routes and the worker token on worker routes. Path
parameters are half the time the names of real things — a complete run with
outputs, an upload, a code bundle, a registered worker, a spare token — so
requests reach the code behind the lookups, not only the 404s. No answer may
be a server error (schemathesis' `not_a_server_error` check).

CAST_FUZZ_EXAMPLES sets the examples per operation and mode (default 30,
about half a minute here); raise it for a deeper run.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import tarfile

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.server.test_app import PUBLIC, WORKER_ROUTES

EXAMPLES = int(os.environ.get("CAST_FUZZ_EXAMPLES", "30"))
CODE_KEY = "c0de" * 16

# Tar bodies (outputs, code bundles) are fuzzed as arbitrary bytes.
schemathesis.serializer.alias("application/x-tar", "application/octet-stream")


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def targets(module_server) -> dict:
    """Real things for path parameters to name, made through the API."""
    user = module_server.api()
    worker = module_server.api(module_server.worker_token)
    run_id = user.post("/runs", json={"command": "true"}).json()["id"]
    worker_id = worker.post("/workers", json={"name": "fuzz", "executor": "local"}).json()["id"]
    lease = worker.post(f"/workers/{worker_id}/lease", json={}).json()
    for status in ("mounting", "running", "saving", "pushing"):
        answer = worker.post(f"/runs/{run_id}/status", json={"lease_token": lease["lease_token"], "status": status})
        assert answer.status_code == 200, answer.text
    pushed = worker.put(f"/runs/{run_id}/outputs", content=_tar({"out.txt": b"out\n", "d/f.txt": b"f\n"}),
                        headers={"X-Lease-Token": lease["lease_token"]})
    assert pushed.status_code == 200, pushed.text
    done = worker.post(f"/runs/{run_id}/status",
                       json={"lease_token": lease["lease_token"], "status": "complete", "exit_code": 0})
    assert done.json()["status"] == "complete"
    assert user.put("/uploads/data", params={"kind": "dir"}, content=_tar({"a.txt": b"a\n"})).status_code == 201
    bundle = _tar({"train.py": b"print(1)\n"})
    assert user.put(f"/code/{CODE_KEY}", content=bundle).status_code == 201
    search = user.post("/searches", json={"kind": "grid", "command": "echo :x:", "params": {"x": "1,2"}})
    assert search.status_code == 201, search.text
    # Killed, so its queued run ends: a follower of a run that never ends would never return.
    assert user.post(f"/searches/{search.json()['id']}/kill").status_code == 200
    spare = user.post("/tokens", json={"name": "spare"}).json()["id"]
    # The tokens the fuzzer calls with: revoking them would turn the rest into 401s.
    own = {t["id"] for t in user.get("/tokens").json()["tokens"] if t["name"] == "bootstrap"}
    user.close()
    worker.close()
    return {
        "known": {"run_id": run_id, "worker_id": worker_id, "name": "data", "path": "d/f.txt", "label": "x",
                  "key": CODE_KEY, "digest": hashlib.sha256(bundle).hexdigest(), "token_id": spare, "resource": f"runs/{run_id}/out.txt",
                  "search_id": search.json()["id"]},
        "own_tokens": own,
        "spare_token": spare,
    }


def _strategy(operation, mode: GenerationMode, known: dict):
    """Generated cases; half of them with path parameters naming real things."""
    generated = operation.as_strategy(generation_mode=mode)
    names = {p.name for p in operation.iter_parameters() if p.location == "path"}
    if not names:
        return generated
    fixed = operation.as_strategy(generation_mode=mode, path_parameters={n: known[n] for n in names})
    return st.one_of(generated, fixed)


def _has_inputs(operation) -> bool:
    return any(True for _ in operation.iter_parameters()) or bool(operation.get_request_payload_content_types())


# Its time grows with the API's operations; the bound only guards against a hang.
@pytest.mark.timeout(1200)
def test_no_request_makes_a_server_error(module_server, targets):
    schema = schemathesis.openapi.from_url(f"{module_server.url}/api/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30
    session = requests.Session()
    admin = {"Authorization": f"Bearer {module_server.admin_token}"}
    worker = {"Authorization": f"Bearer {module_server.worker_token}"}
    examples: collections.Counter = collections.Counter()
    statuses: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    failures: list[str] = []
    refused_tokens: list[str] = []

    for operation in operations:
        key = (operation.method.upper(), operation.full_path)
        headers = worker if key in WORKER_ROUTES else admin
        for mode in GenerationMode:
            if mode is GenerationMode.NEGATIVE and not _has_inputs(operation):
                continue  # nothing to make invalid

            @given(case=_strategy(operation, mode, targets["known"]))
            @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            def exercise(case):
                if case.path_parameters and case.path_parameters.get("token_id") in targets["own_tokens"]:
                    case.path_parameters["token_id"] = targets["spare_token"]
                if isinstance(case.body, dict) and isinstance(case.body.get("wait"), (int, float)):
                    case.body["wait"] = min(case.body["wait"], 0.2)  # a lease's long poll
                examples[operation.label] += 1
                try:
                    response = case.call(session=session, headers=headers, timeout=30)
                    case.validate_response(response, checks=[not_a_server_error], headers=headers)
                except Exception as error:  # noqa: BLE001 - every failure is collected and reported below
                    failures.append(f"{operation.label} ({mode.value}): {error}\n  {case.as_curl_command(headers=headers)}")
                    return
                statuses[operation.label][response.status_code] += 1
                # A public route reads no bearer token: its 401 (a spent sign-in link) is about the body.
                if (response.status_code == 401 and operation.full_path not in PUBLIC
                        and response.request.headers.get("Authorization") == headers["Authorization"]):
                    refused_tokens.append(operation.label)  # negative mode also sends no token: that 401 is right
                if key == ("POST", "/api/v1/runs") and response.status_code == 201:
                    # No worker runs these: end them, so log followers see them finished.
                    session.post(f"{module_server.url}/api/v1/runs/{response.json()['id']}/kill", headers=admin)
                if key == ("POST", "/api/v1/searches") and response.status_code == 201:
                    # Nor its runs: killing the search kills them and starts no more.
                    session.post(f"{module_server.url}/api/v1/searches/{response.json()['id']}/kill", headers=admin)

            exercise()

    assert not failures, f"{len(failures)} failing requests:\n" + "\n".join(failures[:20])
    assert set(examples) == {op.label for op in operations}, "an operation was never exercised"
    total = sum(examples.values())
    assert total >= len(operations) * min(EXAMPLES, 5)
    # The fuzzer stayed authenticated, and its requests reached the handlers.
    assert not refused_tokens, refused_tokens
    answered_ok = [label for label, counts in statuses.items() if any(200 <= code < 300 for code in counts)]
    assert len(answered_ok) >= len(operations) // 2, statuses
    print(f"\nfuzzed {len(operations)} operations with {total} requests; "
          f"{sum(sum(c.values()) for c in statuses.values())} answered, none with a server error")
    with httpx.Client(base_url=f"{module_server.url}/api/v1", timeout=10) as client:
        assert client.get("/health").status_code == 200
