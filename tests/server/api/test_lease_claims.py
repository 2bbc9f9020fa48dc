"""A worker's lease claim: a retried long poll whose first try leased a run
(its answer lost with a replica behind a balancer) is answered that run again,
with the claim as its lease token; a new claim leases the next run."""

from __future__ import annotations


def _lease(local, worker_id: str, claim: str | None):
    body = {"free_gpus": 0, "wait": 0, **({"claim": claim} if claim else {})}
    return local.worker.post(f"/workers/{worker_id}/lease", json=body)


def test_a_retried_claim_is_answered_the_run_it_leased(local):
    first_run, second_run = local.create_run()["id"], local.create_run()["id"]
    worker_id = local.register()
    claim = "ab" * 16
    first, again = _lease(local, worker_id, claim), _lease(local, worker_id, claim)
    assert first.status_code == again.status_code == 200
    assert first.json()["run_id"] == again.json()["run_id"] == first_run
    assert first.json()["lease_token"] == again.json()["lease_token"] == claim
    assert _lease(local, worker_id, "cd" * 16).json()["run_id"] == second_run
    # Another worker cannot take over a run by naming its claim.
    other = local.register("other")
    assert _lease(local, other, claim).status_code == 204


def test_a_claim_is_checked(local):
    worker_id = local.register()
    refused = _lease(local, worker_id, "not hex")
    assert refused.status_code == 422 and "claim" in refused.json()["detail"]
