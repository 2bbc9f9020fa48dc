"""The reference docs against the code they describe.

docs/cli.md against `cast --help` and every command's `--help` (the commands
that hand over to `python -m cast.server` or `python -m cast.worker`
included): every command has a section, every option is in an option table
of its command's section, and nothing documented is missing from the CLI.
docs/api.md against the OpenAPI document of a real app: every operation is a
row of a route table, no row names a route that does not exist, and the routes
it says need no token are exactly those that answer without one.
docs/reliability.md's operation counts against the same document, and
docs/deployment.md's settings table against the server's `Settings`.

The docs' format this relies on: a command's section has a heading naming it
in backquotes (`cast token create`; several commands may share a section
when they take the same options), and its options are the first-column
entries of tables whose first header is "option" or "flag". Routes are the
first-column entries of api.md's tables, `METHOD /api/v1/path`.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from fastapi.testclient import TestClient

from cast.server.app import create_app
from cast.server.settings import Settings
from tests.conftest import REPO_ROOT

DOCS = REPO_ROOT / "docs"
HELP_OPTIONS = {"-h", "--help"}  # every command takes them; cli.md says so once
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
ROUTE = re.compile(r"`(GET|POST|PUT|DELETE|HEAD|PATCH) (/api/v1/[^`\s]*)`")
HEADING = re.compile(r"^(#{1,4}) (.*)$")

CommandPath = tuple[str, ...]


# --- reading the docs --------------------------------------------------------

def _sections(text: str) -> list[tuple[str, list[str]]]:
    """(heading, lines up to the next heading), for each heading."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    fenced = False
    for line in text.splitlines():
        fenced ^= line.startswith("```")
        heading = None if fenced else HEADING.match(line)
        if heading:
            sections.append((heading.group(2), []))
        else:
            sections[-1][1].append(line)
    return sections


def _tables(lines: list[str]) -> list[tuple[list[str], list[list[str]]]]:
    """(header cells, rows of cells) for each markdown table in `lines`."""
    tables, current = [], None
    for line in lines + [""]:
        if line.startswith("|"):
            # `\|` is a bar inside a cell (a choice such as auto\|local).
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if current is None:
                current = (cells, [])
                tables.append(current)
            elif not set("".join(cells)) <= set("-: "):
                current[1].append(cells)
        else:
            current = None
    return tables


def _command_paths(heading: str) -> list[CommandPath]:
    """`cast user create NAME [--admin]` -> ("user", "create"): the words that name commands."""
    paths = []
    for span in re.findall(r"`(cast(?: [^`]*)?)`", heading):
        words = []
        for word in span.split()[1:]:
            if not re.fullmatch(r"[a-z][a-z-]*", word):
                break
            words.append(word)
        paths.append(tuple(words))
    return paths


def documented_commands(text: str) -> dict[CommandPath, set[str]]:
    """Each command with a section in cli.md, and the options its tables list."""
    documented: dict[CommandPath, set[str]] = {}
    for heading, lines in _sections(text):
        options = {option
                   for header, rows in _tables(lines) if header and header[0].lower() in ("option", "flag")
                   for row in rows for span in re.findall(r"`([^`]*)`", row[0]) for option in OPTION.findall(span)}
        for path in _command_paths(heading):
            documented.setdefault(path, set()).update(options)
    return documented


def documented_routes(text: str) -> set[tuple[str, str]]:
    return {(method, path)
            for _heading, lines in _sections(text) for _header, rows in _tables(lines)
            for row in rows for method, path in ROUTE.findall(row[0])}


def _section_text(text: str, title: str) -> str:
    for heading, lines in _sections(text):
        if heading == title:
            return "\n".join(lines)
    raise AssertionError(f"docs have no section '{title}'")


# --- reading the code --------------------------------------------------------

def parse_help(text: str) -> tuple[set[str], list[str]]:
    """The options and the subcommands a click or argparse `--help` lists."""
    options, commands, section = set(), [], ""
    for line in text.splitlines():
        if line and not line[0].isspace():
            section = line.strip().rstrip(":").lower()
            continue
        entry = re.match(r"^  (\S.*?)(?:\s{2,}.*)?$", line)  # entries are indented by exactly two spaces
        if not entry:
            continue
        head = entry.group(1)
        if head.startswith("-"):
            options.update(OPTION.findall(head))
        elif section == "commands":
            commands.append(head.split()[0])
        elif section == "positional arguments" and head.startswith("{"):
            commands.extend(head.strip("{}").split(","))
    return options - HELP_OPTIONS, commands


@pytest.fixture(scope="module")
def cli_tree(tmp_path_factory) -> dict[CommandPath, set[str]]:
    """Every command of `cast` (subcommands and hand-overs included) -> its options, from `--help`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAST_")}
    env["CAST_HOME"] = str(tmp_path_factory.mktemp("home"))  # `cast up --help` must find no running server
    tree: dict[CommandPath, set[str]] = {}

    def walk(path: CommandPath) -> None:
        shown = subprocess.run(["cast", *path, "--help"], env=env, capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0, f"`cast {' '.join(path)} --help` failed:\n{shown.stderr}"
        tree[path], commands = parse_help(shown.stdout)
        for command in commands:
            walk((*path, command))

    walk(())
    return tree


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("api") / "data"))
    yield app
    app.state.database.dispose()


@pytest.fixture(scope="module")
def operations(app) -> dict[tuple[str, str], dict]:
    """(METHOD, path) -> operation, for every operation of the app's OpenAPI document."""
    document = TestClient(app).get(app.openapi_url).json()
    return {(method.upper(), path): operation
            for path, item in document["paths"].items() for method, operation in item.items()}


def _shape(path: str) -> str:
    """Parameter names aside: the docs say {id} where the code says {run_id}."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def _cast(path: CommandPath, option: str = "") -> str:
    return "`" + " ".join(("cast", *path, *([option] if option else []))) + "`"


# --- the tests ---------------------------------------------------------------

def test_the_help_parser_reads_click_and_argparse():
    click_help = ("Usage: cast token [OPTIONS] COMMAND\n\nOptions:\n  --name TEXT  A note.\n"
                  "  -m, --mount RESOURCE[:PATH]\n                 runs/N or --not-this\n  -h, --help  Show.\n\n"
                  "Commands:\n  create  Create a token.\n  ls      List.\n")
    assert parse_help(click_help) == ({"--name", "-m", "--mount"}, ["create", "ls"])
    argparse_help = ("usage: python -m cast.worker cache [-h] {ls,prune} ...\n\npositional arguments:\n"
                     "  {ls,prune}\n\noptions:\n  -h, --help  show\n  --access-log, --no-access-log\n"
                     "\ndocker executor:\n  each defaults to its variable\n\n  --base-image IMAGE    base\n")
    assert parse_help(argparse_help) == ({"--access-log", "--no-access-log", "--base-image"}, ["ls", "prune"])


def test_the_docs_parser_reads_sections_and_tables():
    text = ("# `cast` reference\n\n## `cast up` (`cast server up`)\n\n| option | meaning |\n| --- | --- |\n"
            "| `--executor auto\\|local`, `-e X` | `--not-an-option` in the meaning |\n\n"
            "| setting | meaning |\n| --- | --- |\n| `--no` | not an option table |\n\n"
            "```\n# not a heading\n```\n### `cast token create [--worker]`\n\n| method and path | answer |\n"
            "| --- | --- |\n| `GET /api/v1/runs/{id}` and `HEAD /api/v1/x` | 200 |\n")
    assert documented_commands(text) == {(): set(), ("up",): {"--executor", "-e"},
                                         ("server", "up"): {"--executor", "-e"}, ("token", "create"): set()}
    assert documented_routes(text) == {("GET", "/api/v1/runs/{id}"), ("HEAD", "/api/v1/x")}


def test_cli_md_documents_every_command_and_option_and_nothing_else(cli_tree):
    assert ("run",) in cli_tree and "--github-url" in cli_tree[("run",)]  # the walk found the CLI
    documented = documented_commands((DOCS / "cli.md").read_text())
    problems = [f"docs/cli.md has no section whose heading names {_cast(path)}"
                for path in sorted(cli_tree.keys() - documented.keys())]
    problems += [f"docs/cli.md has a section for {_cast(path)}, which `cast --help` does not list"
                 for path in sorted(documented.keys() - cli_tree.keys())]
    for path in sorted(cli_tree.keys() & documented.keys()):
        problems += [f"{_cast(path, option)} is not in an option table of the {_cast(path)} section of docs/cli.md"
                     for option in sorted(cli_tree[path] - documented[path])]
        problems += [f"docs/cli.md lists {_cast(path, option)}, which {_cast(path, '--help')} does not show"
                     for option in sorted(documented[path] - cli_tree[path])]
    assert not problems, "\n".join(problems)


def test_api_md_documents_every_route_and_nothing_else(operations):
    documented = {(method, _shape(path)) for method, path in documented_routes((DOCS / "api.md").read_text())}
    actual = {(method, _shape(path)) for method, path in operations}
    problems = [f"docs/api.md has no table row for `{method} {path}`"
                for method, path in sorted(operations) if (method, _shape(path)) not in documented]
    problems += [f"docs/api.md lists `{method} {path}`, which the OpenAPI document does not have"
                 for method, path in sorted(documented - actual)]
    assert not problems, "\n".join(problems)


def test_api_md_names_exactly_the_routes_that_need_no_token(app, operations):
    said = set(ROUTE.findall(_section_text((DOCS / "api.md").read_text(), "Authentication")))
    public = {key for key, operation in operations.items() if "security" not in operation}
    public |= {("GET", app.openapi_url), ("GET", app.docs_url)}
    assert said == public, f"docs/api.md's Authentication section lists {sorted(said)}; the routes without a token are {sorted(public)}"
    client = TestClient(app)
    for method, path in sorted(public):  # a POST without its body is refused for the body, not a token
        assert client.request(method, path).status_code == (422 if method == "POST" else 200), (method, path)


def test_reliability_md_counts_the_operations_of_the_openapi_document(operations):
    text = (DOCS / "reliability.md").read_text()
    quoted = [int(n) for n in re.findall(r"(\d+)\**\s+operations\b", text)]
    assert len(quoted) >= 2, "docs/reliability.md no longer says how many operations the fuzzer and the access walk cover"
    assert set(quoted) == {len(operations)}, (
        f"docs/reliability.md counts {quoted} operations; the OpenAPI document has {len(operations)}")
    guarded = sum("security" in operation for operation in operations.values())
    said = [int(n) for n in re.findall(r"the (\d+) that need a token", text)]
    assert said == [guarded], f"docs/reliability.md says {said} operations need a token; the OpenAPI document has {guarded}"


def test_deployment_md_lists_every_server_setting_and_nothing_else():
    listed = {row[0].strip("`")
              for _heading, lines in _sections((DOCS / "deployment.md").read_text())
              for header, rows in _tables(lines) if header[:1] == ["setting"] for row in rows}
    prefix = Settings.model_config["env_prefix"]
    actual = {prefix + name.upper() for name in Settings.model_fields}
    problems = [f"docs/deployment.md's settings table has no row for `{name}`" for name in sorted(actual - listed)]
    problems += [f"docs/deployment.md lists `{name}`, which the server's Settings do not have"
                 for name in sorted(listed - actual)]
    assert not problems, "\n".join(problems)
