"""GET /api/v1/protocol/statuses: the status vocabulary, public and in the OpenAPI document."""

from __future__ import annotations

from fastapi.testclient import TestClient

from cast.protocol.status import FINAL_STATUSES, LEASED_STATUSES, TRANSITIONS, RunStatus, stage_lines


def test_statuses_are_the_protocols_in_order_without_a_token(app):
    response = TestClient(app).get("/api/v1/protocol/statuses")
    assert response.status_code == 200, response.text
    table = response.json()["statuses"]
    assert [s["name"] for s in table] == [s.value for s in RunStatus]
    by_name = {s["name"]: s for s in table}
    assert {n for n, s in by_name.items() if s["final"]} == {s.value for s in FINAL_STATUSES}
    assert {n for n, s in by_name.items() if s["leased"]} == {s.value for s in LEASED_STATUSES}
    for status, targets in TRANSITIONS.items():
        assert by_name[status.value]["next"] == sorted(t.value for t in targets)
    # A stage's name is the title of the "… done" line a follower sees when it ends.
    stages = {n: s["stage"] for n, s in by_name.items() if s["stage"]}
    assert {"machine_requested", "building", "mounting", "saving", "pushing"} == set(stages)
    for name, stage in stages.items():
        ends = [stage_lines(RunStatus(name), RunStatus(t))[:1] for t in by_name[name]["next"]]
        assert [f"{stage}… done"] in ends, (name, ends)


def test_a_bad_token_does_not_hide_the_statuses(app):
    answer = TestClient(app).get("/api/v1/protocol/statuses", headers={"Authorization": "Bearer nope"})
    assert answer.status_code == 200
    assert len(answer.json()["statuses"]) == len(RunStatus)


def test_the_answer_is_described_in_the_openapi_document(app):
    document = TestClient(app).get("/api/v1/openapi.json").json()
    operation = document["paths"]["/api/v1/protocol/statuses"]["get"]
    assert "security" not in operation
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    table = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    info = document["components"]["schemas"][table["properties"]["statuses"]["items"]["$ref"].rsplit("/", 1)[1]]
    assert set(info["properties"]) == {"name", "final", "leased", "stage", "next"}
