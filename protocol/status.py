"""Run statuses: the one vocabulary, the table of allowed changes, stage lines.

Owns: `RunStatus`, `TRANSITIONS` (anything not listed is refused), the groups
of statuses the parts ask about (final, leased, mountable), and the lines a
follower sees for each change. The viewer reads all of it from
`GET /api/v1/protocol/statuses` (`status_table`) instead of a copy of its own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class RunStatus(str, enum.Enum):
    MACHINE_REQUESTED = "machine_requested"
    BUILDING = "building"
    MOUNTING = "mounting"
    RUNNING = "running"
    SAVING = "saving"
    PUSHING = "pushing"
    COMPLETE = "complete"
    FAILED = "failed"
    BUILD_FAILED = "build_failed"
    MOUNT_FAILED = "mount_failed"
    STOPPING = "stopping"
    STOPPED = "stopped"
    KILLING = "killing"
    KILLED = "killed"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value


S = RunStatus

# Every allowed change of a run's status. Anything not listed is refused.
# - the worker moves a run forward through the stages;
# - stop/kill from the API move an active run to stopping/killing (a queued
#   run has nothing to stop, so it goes straight to stopped/killed);
# - a stopped run still saves and pushes its outputs, a killed one does not;
# - a lost lease makes any leased run interrupted, and a retry requeues it;
# - any leased run but a killed one may fail at once: the server refused one
#   of its worker's reports for good, or the reaper found it in a stage past
#   the stage's bound (a stuck `killing` ends killed).
TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    S.MACHINE_REQUESTED: frozenset({S.BUILDING, S.STOPPED, S.KILLED}),
    S.BUILDING: frozenset(
        {S.MOUNTING, S.BUILD_FAILED, S.FAILED, S.STOPPING, S.KILLING, S.INTERRUPTED}
    ),
    S.MOUNTING: frozenset(
        {S.RUNNING, S.MOUNT_FAILED, S.FAILED, S.STOPPING, S.KILLING, S.INTERRUPTED}
    ),
    S.RUNNING: frozenset({S.SAVING, S.FAILED, S.STOPPING, S.KILLING, S.INTERRUPTED}),
    S.SAVING: frozenset({S.PUSHING, S.FAILED, S.KILLING, S.INTERRUPTED}),
    S.PUSHING: frozenset(
        {S.COMPLETE, S.FAILED, S.STOPPED, S.KILLING, S.INTERRUPTED}
    ),
    S.STOPPING: frozenset({S.SAVING, S.STOPPED, S.FAILED, S.KILLING, S.INTERRUPTED}),
    S.KILLING: frozenset({S.KILLED, S.INTERRUPTED}),
    S.INTERRUPTED: frozenset({S.MACHINE_REQUESTED}),
    S.COMPLETE: frozenset(),
    S.FAILED: frozenset(),
    S.BUILD_FAILED: frozenset(),
    S.MOUNT_FAILED: frozenset(),
    S.STOPPED: frozenset(),
    S.KILLED: frozenset(),
}

FINAL_STATUSES = frozenset(s for s, targets in TRANSITIONS.items() if not targets) | {
    S.INTERRUPTED
}
# Statuses in which a worker holds the run's lease.
LEASED_STATUSES = frozenset(
    {S.BUILDING, S.MOUNTING, S.RUNNING, S.SAVING, S.PUSHING, S.STOPPING, S.KILLING}
)
# Runs in these statuses have outputs that other runs may mount.
MOUNTABLE_STATUSES = frozenset({S.COMPLETE, S.FAILED, S.STOPPED})


def sources_of(target: RunStatus) -> frozenset[RunStatus]:
    """The statuses from which a run may move to `target`."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


def is_final(status: RunStatus | str) -> bool:
    return RunStatus(status) in FINAL_STATUSES


_STAGE_TITLES = {
    S.MACHINE_REQUESTED: "Machine_Requested",
    S.BUILDING: "Building",
    S.MOUNTING: "Mounting",
    S.SAVING: "Saving",
    S.PUSHING: "Pushing",
}
_FAILED_STAGE = {S.BUILD_FAILED: S.BUILDING, S.MOUNT_FAILED: S.MOUNTING}


def stage_lines(previous: RunStatus, new: RunStatus, note: str | None = None) -> list[str]:
    """The lines a follower sees when a run moves from `previous` to `new`.

    `note` qualifies the stage that just ended, e.g. "cached" for a build or
    "local, cpu" for the machine.
    """
    lines = []
    if new in _FAILED_STAGE:
        lines.append(f"{_STAGE_TITLES[_FAILED_STAGE[new]]}… failed" + (f": {note}" if note else ""))
        return lines
    if new is S.FAILED and note:  # ended out of turn, with why
        return [f"{_STAGE_TITLES[previous]}… failed: {note}" if previous in _STAGE_TITLES else f"Run failed: {note}"]
    if previous in _STAGE_TITLES and new not in (S.INTERRUPTED, S.KILLING, S.KILLED):
        lines.append(f"{_STAGE_TITLES[previous]}… done" + (f" ({note})" if note else ""))
    if new is S.RUNNING:
        lines.append("Run is running")
    elif new is S.STOPPING:
        lines.append("Stopping…" + (f" ({note})" if note else ""))
    elif new is S.KILLING:
        lines.append("Killing…")
    elif new is S.INTERRUPTED:
        lines.append("Run interrupted" + (f": {note}" if note else ""))
    elif new is S.MACHINE_REQUESTED:
        lines.append("Requeued" + (f" ({note})" if note else ""))
    return lines


# The participle of a user's stop or kill, for the messages that name one:
# one place, so the CLI's "Run 3 is being killed" and the server's "run 1 is
# complete; it cannot be stopped" speak alike.
_HALTED_AS = {S.STOPPING: "stopped", S.STOPPED: "stopped", S.KILLING: "killed", S.KILLED: "killed"}


def halting_line(run_id: int, status: RunStatus) -> str:
    """What a stop or kill just did to a run: "Run 3 is being killed", "Run 4 is stopped"."""
    if status in (S.STOPPING, S.KILLING):
        return f"Run {run_id} is being {_HALTED_AS[status]}"
    return f"Run {run_id} is {status.value}"


def refusal(run_id: int, current: str, wanted: RunStatus) -> str:
    """Why a run cannot move to `wanted`: "run 1 is complete; it cannot be stopped"."""
    halted = _HALTED_AS.get(wanted)
    return f"run {run_id} is {current}; " + (f"it cannot be {halted}" if halted else f"it cannot become {wanted.value}")


@dataclass(frozen=True)
class StatusInfo:
    """One status as a client that shows statuses sees it."""

    name: str
    final: bool
    leased: bool
    stage: str | None  # its title in stage lines ("Building"), if it is a stage
    next: list[str]  # the statuses it may move to, sorted


@dataclass(frozen=True)
class StatusTable:
    """The answer of `GET /api/v1/protocol/statuses`: every status, in order."""

    statuses: list[StatusInfo]


def status_table() -> StatusTable:
    """Everything a client that shows statuses needs, in the table's order."""
    return StatusTable(statuses=[
        StatusInfo(
            name=s.value,
            final=s in FINAL_STATUSES,
            leased=s in LEASED_STATUSES,
            stage=_STAGE_TITLES.get(s),
            next=sorted(t.value for t in TRANSITIONS[s]),
        )
        for s in RunStatus
    ])
