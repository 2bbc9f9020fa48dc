"""Validation of what a user can put in a run: each validator's accepted
input (and what it returns) and its refusals, with the message the CLI, the
server and the worker all show."""

from __future__ import annotations

import pytest

from cast.protocol.validate import (Mount, Resource, SpecError, looks_secret, make_mount, normalize_relative_path,
                                    parse_env,
                                    parse_machine_type, parse_mount, parse_resource, validate_apt_package,
                                    validate_env_name, validate_label, validate_mounts, validate_pip_spec,
                                    validate_upload_name, validate_workdir)


def refused(function, value, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        function(value)
    assert message in str(caught.value), (value, str(caught.value))


def test_spec_errors_are_value_errors():
    assert issubclass(SpecError, ValueError)


def test_relative_paths():
    assert normalize_relative_path("a/./b//c") == "a/b/c"
    assert normalize_relative_path("a/../b") == "b"
    refused(normalize_relative_path, "", "is empty or contains a NUL byte")
    refused(normalize_relative_path, "a\x00b", "is empty or contains a NUL byte")
    refused(normalize_relative_path, "/etc/passwd", "must be relative, not absolute")
    refused(normalize_relative_path, "\\windows", "must be relative, not absolute")
    for escape in ("..", "../x", "a/../../b"):
        refused(normalize_relative_path, escape, "escapes its root with '..'")


def test_workdirs():
    assert validate_workdir("sub/./deep/") == "sub/deep"
    assert validate_workdir(".") is None and validate_workdir("sub/..") is None  # the code's root
    refused(validate_workdir, "/abs", "workdir '/abs' must be relative, not absolute")
    refused(validate_workdir, "../up", "workdir '../up' escapes its root with '..'")
    refused(validate_workdir, "x" * 5000, "workdir of 5000 characters exceeds the limit")


def test_resources():
    output = parse_resource("runs/3/out//a.txt")
    assert output == Resource("runs", "3", "out/a.txt") and output.run_id == 3
    assert str(output) == "runs/3/out/a.txt"
    whole = parse_resource("uploads/my data")
    assert whole == Resource("uploads", "my data", "") and str(whole) == "uploads/my data"
    refused(parse_resource, "/etc/passwd", "not an absolute path")
    for elsewhere in ("elsewhere/1", "runs", "uploads", "runs/1/../../etc"):
        with pytest.raises(SpecError):
            parse_resource(elsewhere)
    refused(parse_resource, "elsewhere/1", "must be runs/N[/path] or uploads/NAME[/path]")
    for not_a_run in ("runs/0", "runs/abc", "runs/-1", "runs/123456789012"):
        refused(parse_resource, not_a_run, "is not a run number")
    refused(parse_resource, "uploads/-rf", "upload name '-rf'")


def test_upload_names():
    for name in ("data.txt", "my data set_v1", "_x", "a" * 200):
        assert validate_upload_name(name) == name
    for name in ("-x", ".", "..", "a" * 201, "a/b", "", "tab\tname"):
        refused(validate_upload_name, name, "must be 1-200 letters, digits")


def test_mounts():
    assert parse_mount("runs/1/out/a.txt") == Mount("runs/1/out/a.txt", "a.txt")
    assert parse_mount("runs/1") == Mount("runs/1", "1")
    assert parse_mount("uploads/ds:inputs/./ds") == Mount("uploads/ds", "inputs/ds")
    assert parse_mount("uploads/ds:x").to_dict() == {"resource": "uploads/ds", "path": "x"}
    refused(parse_mount, "runs/1:../x", "mount path '../x' escapes its root")
    refused(parse_mount, "runs/1:/abs", "mount path '/abs' must be relative")
    refused(parse_mount, "nowhere/1:x", "must be runs/N")


def test_a_name_holding_a_colon_mounts_when_resource_and_path_come_apart():
    assert parse_mount("runs/1/a:b.txt") == Mount("runs/1/a", "b.txt")  # typed after -m: the first ':' splits
    assert make_mount("runs/1/a:b.txt", None) == Mount("runs/1/a:b.txt", "a:b.txt")
    assert make_mount("runs/1/a:b.txt", "in/one") == Mount("runs/1/a:b.txt", "in/one")
    with pytest.raises(SpecError, match="mount path '../up' escapes its root"):
        make_mount("runs/1/a:b.txt", "../up")


def test_mount_paths_may_not_meet():
    validate_mounts([Mount("runs/1", "a"), Mount("runs/2", "ab"), Mount("runs/3", "b/a")])
    with pytest.raises(SpecError, match="two mounts on one path: 'a'"):
        validate_mounts([Mount("runs/1", "a"), Mount("runs/2", "a")])
    with pytest.raises(SpecError, match="mount paths 'a' and 'a/b' overlap"):
        validate_mounts([Mount("runs/1", "a"), Mount("runs/2", "a/b")])
    with pytest.raises(SpecError, match="mount paths 'a/b' and 'a' overlap"):
        validate_mounts([Mount("runs/1", "a/b"), Mount("runs/2", "a")])


def test_pip_specs():
    for spec in ("tqdm", "torch==2.1.0", "requests[socks]>=2,<3", "numpy ~= 1.26", "a.b_c-d!=1.0"):
        assert validate_pip_spec(spec) == spec
    assert validate_pip_spec("  tqdm ") == "tqdm"
    for spec in ("tqdm; rm -rf /", "--index-url=http://evil", "-e .", "git+https://host/x.git",
                 "pkg @ https://host/pkg.whl", "tqdm==1.0 && curl x", ""):
        refused(validate_pip_spec, spec, "is not a package requirement (NAME[extras][==VERSION])")


def test_apt_packages():
    for name in ("curl", "libssl-dev", "g++", "libc6=2.36-9+deb12u4", "tzdata=2024a-0+deb12u1~1:x"):
        assert validate_apt_package(name) == name
    for name in ("bad pkg", "Curl", "-x", "curl;ls", "curl=", ""):
        refused(validate_apt_package, name, "is not a Debian package name")


def test_machine_types():
    assert [parse_machine_type(t) for t in ("cpu", "gpu", "gpu:1", "gpu:4", "gpu:16")] == [0, 1, 1, 4, 16]
    for text in ("tpu", "", "gpu:", "GPU", "cpu:2", "gpu:123"):
        refused(parse_machine_type, text, "must be cpu, gpu or gpu:N")
    for text in ("gpu:0", "gpu:17", "gpu:99"):
        refused(parse_machine_type, text, "N must be between 1 and 16")


def test_env():
    assert parse_env("SEED=7") == ("SEED", "7")
    assert parse_env("A=b=c") == ("A", "b=c") and parse_env("_EMPTY=") == ("_EMPTY", "")
    assert validate_env_name("CUDA_VISIBLE_DEVICES") == "CUDA_VISIBLE_DEVICES"
    refused(parse_env, "NOVALUE", "--env 'NOVALUE' must be NAME=VALUE")
    for text in ("1BAD=x", "A-B=x", "=x", "A B=x"):
        refused(parse_env, text, "is not valid")


def test_labels():
    for label in ("exp1", "best-run:v2.0_a", "a" * 63):
        assert validate_label(label) == label
    for label in ("no spaces", "-x", ".x", "a" * 64, "", "a/b"):
        refused(validate_label, label, "must be 1-63 letters, digits, '.', '_', ':' or '-'")


def test_secret_looking_names():
    for name in ("API_TOKEN", "aws_secret_access_key", "DB_PASSWORD", "SSH_KEY", "HF_AUTH", "MY_CREDENTIALS"):
        assert looks_secret(name), name
    for name in ("SEED", "PATH", "EPOCHS", "LEARNING_RATE"):
        assert not looks_secret(name), name
