"""Hosts as network namespaces for the scale-out tests.

Owns the test network: a bridge in the root namespace (which keeps an address
on it, so the test process and the CLI reach every host), and one namespace
per host joined to the bridge by a veth pair, each with its own address.
Every name carries the owning pytest process's id (`cast<pid36><role>`,
interfaces `cs<pid36><role>`, all within Linux's 15 characters), so a sweep
removes what a crashed earlier run left behind and never another live run's.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from dataclasses import dataclass

PREFIX = "cast"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _b36(number: int) -> str:
    text = ""
    while True:
        number, rest = divmod(number, 36)
        text = _DIGITS[rest] + text
        if number == 0:
            return text


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Host:
    role: str
    ns: str
    addr: str
    veth: str  # the root namespace's end

    @property
    def wrap(self) -> list[str]:
        """Prefix of a command run on this host."""
        return ["ip", "netns", "exec", self.ns]

    def link(self, up: bool) -> None:
        """Cut this host off the network (its own end of the cable), or plug it back."""
        _ip("-n", self.ns, "link", "set", "eth0", "up" if up else "down")


class Network:
    """A /24 on a bridge; `add(role)` makes a host. Use as a context manager:
    leaving it kills what is left in the namespaces and removes them and the bridge."""

    def __init__(self, subnet_octet: int | None = None):
        pid = os.getpid()
        self.tag = _b36(pid)
        if len(self.tag) > 5:
            raise RuntimeError(f"pid {pid} too large for interface names")
        # One subnet per live run: the pid picks it, so two runs on one host do not clash.
        self.subnet = f"10.{200 + pid % 50}.{(pid // 50) % 250}"
        self.bridge = f"cs{self.tag}br"
        self.hosts: dict[str, Host] = {}

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.1"

    def __enter__(self) -> "Network":
        sweep_stale()
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _accept_bridged(self.bridge, True)
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, role: str) -> Host:
        if not role.isalnum() or len(PREFIX) + len(self.tag) + len(role) > 15:
            raise ValueError(f"host role {role!r} must be short and alphanumeric")
        host = Host(role=role, ns=f"{PREFIX}{self.tag}{role}", addr=f"{self.subnet}.{10 + len(self.hosts)}",
                    veth=f"cs{self.tag}{role}")
        self.hosts[role] = host
        _ip("netns", "add", host.ns)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
        _ip("link", "set", host.veth, "master", self.bridge)
        _ip("link", "set", host.veth, "up")
        _ip("-n", host.ns, "addr", "add", f"{host.addr}/24", "dev", "eth0")
        _ip("-n", host.ns, "link", "set", "eth0", "up")
        _ip("-n", host.ns, "link", "set", "lo", "up")
        return host

    def close(self) -> None:
        for host in self.hosts.values():
            _remove_namespace(host.ns)
            _ip("link", "del", host.veth, check=False)
        _ip("link", "del", self.bridge, check=False)
        _accept_bridged(self.bridge, False)
        self.hosts.clear()


def _accept_bridged(bridge: str, add: bool) -> None:
    """Let frames between the hosts pass: with br_netfilter loaded they cross
    the root namespace's FORWARD chain, whose policy Docker sets to DROP."""
    rule = ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]
    if add:
        subprocess.run(["iptables", "-I", *rule], check=True, capture_output=True)
        return
    while subprocess.run(["iptables", "-D", *rule], capture_output=True).returncode == 0:
        pass


def _remove_namespace(ns: str) -> None:
    """Kill whatever still runs in `ns` (only processes this suite started there), then delete it."""
    pids = _ip("netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _ip("netns", "del", ns, check=False)


def _owner_pid(tag: str) -> int:
    return int(tag, 36)


def owner_gone(tag: str) -> bool:
    """Whether `tag` names a pytest process of this harness that no longer runs."""
    return _is_tag(tag) and not _alive(_owner_pid(tag))


def _is_tag(tag: str) -> bool:
    return 0 < len(tag) <= 5 and set(tag) <= set(_DIGITS) and int(tag, 36) <= _pid_max()


def _pid_max() -> int:
    try:
        return int(open("/proc/sys/kernel/pid_max").read())
    except (OSError, ValueError):
        return 4194304


def sweep_stale() -> list[str]:
    """Remove namespaces and interfaces an earlier run whose pytest process is gone left behind."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        ns = line.split()[0] if line.split() else ""
        tag = _tag_of(ns[len(PREFIX):]) if ns.startswith(PREFIX) else None
        if tag and not _alive(_owner_pid(tag)):
            _remove_namespace(ns)
            removed.append(ns)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if line.count(":") >= 2 else ""
        tag = _tag_of(name[2:]) if name.startswith("cs") else None
        if tag and not _alive(_owner_pid(tag)):
            _ip("link", "del", name, check=False)
            removed.append(name)
    rules = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True).stdout
    for bridge in set(re.findall(r"-i (cs[0-9a-z]+br) ", rules)):
        tag = _tag_of(bridge[2:])
        if tag and not _alive(_owner_pid(tag)):
            _accept_bridged(bridge, False)
            removed.append(f"iptables rule of {bridge}")
    return removed


# Roles are letters then digits ("r1", "lb", "db"), tags are base 36: a name is
# only ours when it ends in one of the roles the harness uses.
ROLES = ("db", "s3", "r1", "r2", "lb", "w1", "w2", "w3", "br")


def _tag_of(rest: str) -> str | None:
    for role in ROLES:
        if rest.endswith(role) and len(rest) > len(role):
            tag = rest[: -len(role)]
            # Only a tag that could be a pid: another suite's `cast…` names stay.
            if _is_tag(tag):
                return tag
    return None
