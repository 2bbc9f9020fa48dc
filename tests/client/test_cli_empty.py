"""What the read commands say when there is little or nothing to show: `cast
ps` empty ("no runs yet", "no runs match") or cut at its limit ("showing 2
of 3 runs; --limit N or --all", and `--all` lists them all), `cast logs` of a
run without lines, and `cast info`'s Pip row for a requirements file alone."""

from __future__ import annotations

from cast.client.cli_spec import build_spec
from tests.client.helpers import assert_one_line_error
from tests.factories import submit


def test_ps_says_when_there_are_no_runs_and_when_none_match(cli, server):
    empty = cli("ps")
    assert (empty.returncode, empty.stdout, empty.stderr) == (0, "no runs yet\n", "")
    submit(server, "true")
    assert cli("ps", "--status", "failed").stdout == "no runs match\n"
    assert cli("ps", "--label", "nothing-has-it").stdout == "no runs match\n"


def test_ps_says_when_it_cut_the_list_and_all_lists_every_run(cli, server):
    run_ids = [submit(server, f"echo {n}") for n in range(3)]  # no worker: they stay queued

    cut = cli("ps", "--limit", "2")
    assert cut.returncode == 0
    assert [line.split()[0] for line in cut.stdout.splitlines()[1:]] == [str(n) for n in run_ids[:0:-1]]
    assert cut.stderr == "showing 2 of 3 runs; --limit N or --all\n"

    everything = cli("ps", "--all")
    assert [line.split()[0] for line in everything.stdout.splitlines()[1:]] == [str(n) for n in reversed(run_ids)]
    assert everything.stderr == ""
    assert len(cli("ps", "--all", "--json").json()) == 3
    assert cli("ps").stderr == ""  # all 3 shown under the default limit
    assert_one_line_error(cli("ps", "--all", "--limit", "2"), "--all lists every run; leave out --limit")


def test_logs_of_a_run_without_lines_says_so(cli, server):
    # A worker that fits but never leases: the run waits without a line ("waiting: no worker…").
    with server.api(server.worker_token) as as_worker:
        as_worker.post("/workers", json={"name": "idle", "executor": "local", "cpus": 4, "memory": 8 << 30,
                                         "gpus": [], "max_runs": 1, "sandboxed": True}).raise_for_status()
    queued = submit(server, "true")
    waiting = cli("logs", str(queued))
    assert (waiting.returncode, waiting.stdout, waiting.stderr) == (0, "", f"run {queued} has no log lines yet\n")
    assert cli("kill", str(queued)).returncode == 0  # a queued run ends at once, logging nothing
    ended = cli("logs", str(queued))
    assert (ended.stdout, ended.stderr) == ("", f"run {queued} logged nothing\n")
    assert cli("logs", "--json", str(queued)).json()["chunks"] == []


def test_info_names_a_requirements_file_given_alone(cli, server, tmp_path):
    requirements = tmp_path / "conf" / "reqs.txt"
    requirements.parent.mkdir()
    requirements.write_text("# pinned\ntqdm\nsix\n")
    spec = build_spec(("true",), {}, {"pip_req": str(requirements)}).spec
    assert (spec.pip_req_name, spec.pip_req) == ("reqs.txt", requirements.read_text())
    only_file = submit(server, "true", pip_req=spec.pip_req, pip_req_name=spec.pip_req_name)
    both = submit(server, "true", pip=["numpy"], pip_req="tqdm\n")  # an API client may leave out the name
    assert _row(cli("info", str(only_file)).stdout, "Pip") == "requirements file reqs.txt (2 lines)"
    assert _row(cli("info", str(both)).stdout, "Pip") == "numpy + requirements file (1 line)"
    for bad in ("", "a/b.txt", "line\nbreak", "x" * 256):
        with server.api() as api:
            refused = api.post("/runs", json={"command": "true", "pip_req": "tqdm\n", "pip_req_name": bad})
        assert refused.status_code == 422 and "pip_req_name" in refused.text, bad


def _row(info: str, name: str) -> str:
    [value] = [line.partition(":")[2].strip() for line in info.splitlines() if line.startswith(f"{name}:")]
    return value
