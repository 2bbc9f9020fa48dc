"""The status vocabulary: the transition table's invariants, the stage lines
a follower sees for each kind of transition, and the table the viewer reads."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from cast.protocol.status import (FINAL_STATUSES, LEASED_STATUSES, MOUNTABLE_STATUSES, TRANSITIONS, RunStatus, halting_line, refusal,
                                  is_final, sources_of, stage_lines, status_table)

S = RunStatus


def test_the_table_covers_every_status_with_statuses():
    assert set(TRANSITIONS) == set(RunStatus)
    for targets in TRANSITIONS.values():
        assert all(isinstance(target, RunStatus) for target in targets)


def test_final_statuses_have_no_exits_but_a_requeue():
    assert FINAL_STATUSES == {s for s, targets in TRANSITIONS.items() if not targets} | {S.INTERRUPTED}
    for status in FINAL_STATUSES - {S.INTERRUPTED}:
        assert TRANSITIONS[status] == frozenset(), status
    # An interrupted run is final for its attempt; a retry queues it again.
    assert TRANSITIONS[S.INTERRUPTED] == {S.MACHINE_REQUESTED}


def test_every_status_is_reachable_from_machine_requested_and_can_end():
    reached, frontier = {S.MACHINE_REQUESTED}, [S.MACHINE_REQUESTED]
    while frontier:
        for target in TRANSITIONS[frontier.pop()]:
            if target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(RunStatus)
    for status in RunStatus:
        ends, frontier = set(), [status]
        while frontier:
            current = frontier.pop()
            ends |= {current} & FINAL_STATUSES
            frontier.extend(TRANSITIONS[current] - {S.MACHINE_REQUESTED})
        assert ends, f"{status} never reaches a final status"


def test_sources_of_agrees_with_the_table():
    for source in RunStatus:
        for target in RunStatus:
            assert (source in sources_of(target)) == (target in TRANSITIONS[source]), (source, target)
    assert sources_of(S.MACHINE_REQUESTED) == {S.INTERRUPTED}
    assert sources_of(S.STOPPED) == {S.MACHINE_REQUESTED, S.STOPPING, S.PUSHING}


def test_status_groups():
    # A lost lease makes any leased run interrupted, and only a leased one.
    assert sources_of(S.INTERRUPTED) == LEASED_STATUSES
    assert not LEASED_STATUSES & FINAL_STATUSES and S.MACHINE_REQUESTED not in LEASED_STATUSES
    assert MOUNTABLE_STATUSES == {S.COMPLETE, S.FAILED, S.STOPPED}
    assert MOUNTABLE_STATUSES < FINAL_STATUSES


def test_statuses_read_from_text():
    assert RunStatus("running") is S.RUNNING and str(S.BUILD_FAILED) == "build_failed"
    assert is_final("complete") and is_final(S.INTERRUPTED) and not is_final("stopping")
    with pytest.raises(ValueError):
        is_final("sleeping")


@pytest.mark.parametrize("previous, new, note, lines", [
    # A stage that ends: its title, done, with the note qualifying it.
    (S.MACHINE_REQUESTED, S.BUILDING, "local, cpu", ["Machine_Requested… done (local, cpu)"]),
    (S.BUILDING, S.MOUNTING, None, ["Building… done"]),
    (S.MOUNTING, S.RUNNING, None, ["Mounting… done", "Run is running"]),
    (S.RUNNING, S.SAVING, None, []),
    (S.SAVING, S.PUSHING, "3 files", ["Saving… done (3 files)"]),
    (S.PUSHING, S.COMPLETE, None, ["Pushing… done"]),
    # A stage that fails: the note says why.
    (S.BUILDING, S.BUILD_FAILED, "pip install failed", ["Building… failed: pip install failed"]),
    (S.MOUNTING, S.MOUNT_FAILED, None, ["Mounting… failed"]),
    # Stop: the stage in progress still ends; the note says why the run stops.
    (S.RUNNING, S.STOPPING, "timed out after 1s", ["Stopping… (timed out after 1s)"]),
    (S.BUILDING, S.STOPPING, None, ["Building… done", "Stopping…"]),
    # Kill and a lost lease cut the stage in progress short.
    (S.BUILDING, S.KILLING, None, ["Killing…"]),
    (S.KILLING, S.KILLED, None, []),
    (S.MOUNTING, S.INTERRUPTED, "worker lost", ["Run interrupted: worker lost"]),
    (S.RUNNING, S.INTERRUPTED, None, ["Run interrupted"]),
    (S.INTERRUPTED, S.MACHINE_REQUESTED, "attempt 2 of 3", ["Requeued (attempt 2 of 3)"]),
])
def test_stage_lines(previous, new, note, lines):
    assert new in TRANSITIONS[previous]
    assert stage_lines(previous, new, note) == lines


def test_status_table_is_the_table_in_order():
    rows = json.loads(json.dumps(asdict(status_table())))["statuses"]  # as served
    assert [row["name"] for row in rows] == [s.value for s in RunStatus]
    for row in rows:
        status = RunStatus(row["name"])
        assert row["final"] == (status in FINAL_STATUSES)
        assert row["leased"] == (status in LEASED_STATUSES)
        assert row["next"] == sorted(t.value for t in TRANSITIONS[status])
    stages = {row["name"]: row["stage"] for row in rows}
    assert stages["building"] == "Building" and stages["machine_requested"] == "Machine_Requested"
    assert stages["running"] is None and stages["complete"] is None


def test_stop_and_kill_read_as_what_they_do_to_a_run():
    assert halting_line(10, S.KILLING) == "Run 10 is being killed"
    assert halting_line(10, S.STOPPING) == "Run 10 is being stopped"
    assert halting_line(4, S.STOPPED) == "Run 4 is stopped"  # a queued run ends at once
    assert refusal(1, "complete", S.STOPPING) == "run 1 is complete; it cannot be stopped"
    assert refusal(1, "killed", S.KILLED) == "run 1 is killed; it cannot be killed"
    assert refusal(3, "building", S.COMPLETE) == "run 3 is building; it cannot become complete"
