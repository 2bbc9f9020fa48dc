"""Two users' uploads of the same content in a real S3 store (SeaweedFS):
each gets an object of their own (`blobs/<user id>/<sha256>`), one deleting
theirs leaves the other's readable, and neither can reach the other's
objects through the plan and commit routes: a plan lists the content as
missing (it says nothing of what another user holds, and signs only the
planner's keys), a commit naming it unsent is refused, and the other's
upload is not found."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from cast.server.models import User
from tests.objectstore.test_blob_collector import blobs, commit, plan_and_put, read, sha, upload
from tests.server.conftest import Api, in_process_api

DATA = b"the same dataset, uploaded by two users\n"


def _user(app, settings, name: str) -> tuple[Api, int]:
    """A new user (not an admin) as an Api, and their id."""
    admin = in_process_api(app, settings)
    made = admin.user.post("/users", json={"name": name})
    assert made.status_code == 201, made.text
    client = TestClient(app, base_url="http://testserver/api/v1",
                        headers={"Authorization": f"Bearer {made.json()['token']['token']}"})
    with app.state.database.transaction(write=False) as session:
        user_id = session.scalar(select(User.id).where(User.name == name))
    return Api(client, admin.worker), user_id


def test_two_users_uploading_the_same_content_each_get_their_own_object(app, settings, seaweed, bucket):
    (alice, alice_id), (bob, bob_id) = _user(app, settings, "alice"), _user(app, settings, "bob")
    upload(alice, "alice-data", {"d.bin": DATA})

    # Bob's plan asks him to send the content Alice holds, to a key of his own.
    plan = bob.user.post("/uploads/bob-data/plan", json={"kind": "dir", "replace": False, "files": [
        {"path": "d.bin", "size": len(DATA), "sha256": sha(DATA)}]})
    assert plan.status_code == 200, plan.text
    [planned] = plan.json()["uploads"]
    assert f"/cast/blobs/{bob_id}/{sha(DATA)}?" in planned["url"] and f"/blobs/{alice_id}/" not in planned["url"]
    # Committed without sending it: Alice's object does not count as his.
    unsent = commit(bob, "bob-data", {"kind": "dir", "replace": False, "files": [
        {"path": "d.bin", "size": len(DATA), "sha256": sha(DATA)}]})
    assert (unsent.status_code, unsent.json()["detail"]) == (
        400, "upload 'bob-data': 'd.bin' is not in the object store whole; push it again")

    upload(bob, "bob-data", {"d.bin": DATA})
    assert sorted(seaweed.keys(bucket, "cast/blobs/")) == sorted([f"cast/blobs/{alice_id}/{sha(DATA)}",
                                                                  f"cast/blobs/{bob_id}/{sha(DATA)}"])
    # Neither reads, replaces or lists the other's upload.
    for name, other in (("alice-data", bob), ("bob-data", alice)):
        assert other.user.get(f"/uploads/{name}/d.bin").status_code == 404
        assert other.user.get(f"/uploads/{name}", params={"list": True}).status_code == 404
        again = other.user.post(f"/uploads/{name}/plan", json={"kind": "dir", "replace": True, "files": [
            {"path": "d.bin", "size": len(DATA), "sha256": sha(DATA)}]})
        assert again.status_code == 409, again.text
        assert name not in {u["name"] for u in other.user.get("/uploads").json()["uploads"]}

    assert bob.user.delete("/uploads/bob-data").status_code == 200
    assert sorted(seaweed.keys(bucket, "cast/blobs/")) == [f"cast/blobs/{alice_id}/{sha(DATA)}"]
    assert read(alice, "/uploads/alice-data/d.bin") == DATA
    assert blobs(seaweed, bucket) == {sha(DATA)}


def test_a_plan_signs_only_the_planners_keys(app, settings, seaweed, bucket):
    (alice, alice_id), (bob, _) = _user(app, settings, "alice"), _user(app, settings, "bob")
    manifest = plan_and_put(bob, "bob-data", {"d.bin": DATA})
    assert commit(bob, "bob-data", manifest).status_code == 201
    # The same manifest committed by Alice names her keys, which hold nothing.
    stolen = commit(alice, "mine-now", manifest)
    assert stolen.status_code == 400, stolen.text
    assert f"cast/blobs/{alice_id}/{sha(DATA)}" not in seaweed.keys(bucket, "cast/blobs/")
