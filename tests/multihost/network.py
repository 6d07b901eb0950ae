"""A small network of hosts made of Linux network namespaces, for the multi-host test.

Every host is a namespace with one veth end (`10.213.N.k/24`); the other ends meet on a
bridge inside a namespace of its own (the "LAN"), so nothing is bridged on the machine's
own interfaces. The test process joins the LAN through one more veth pair whose outer end
(`10.213.N.1`) is the only interface created outside the namespaces: the test reaches
every host, and every host reaches the test's gateways, at those addresses. Everything
is removed on exit, failure included (and what a test process killed outright left behind
is removed by the next run: the namespaces are named after the test's pid). Needs root
(CAP_NET_ADMIN) and iproute2's `ip`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass

# Developers without CAP_NET_ADMIN may set this to skip the multi-host test; CI never does,
# so there a machine without namespaces fails the test instead of skipping it silently.
OPT_OUT = "PUSHREC_TEST_NO_NETNS"


class NamespacesUnavailable(RuntimeError):
    """This machine (or user) cannot create network namespaces."""


@dataclass(frozen=True)
class Host:
    """One namespace: run a command on it with `prefix + argv`."""

    namespace: str
    address: str

    @property
    def prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.namespace)

    def pids(self) -> list[int]:
        out = _ip("netns", "pids", self.namespace, check=False)
        return [int(pid) for pid in out.split()]

    def kill(self) -> list[int]:
        """SIGKILL every process on the host, as a power loss would; the pids killed."""
        killed = self.pids()
        for pid in killed:
            with suppress(ProcessLookupError):  # gone already
                os.kill(pid, signal.SIGKILL)
        return killed


@dataclass(frozen=True)
class Network:
    """The hosts by name, and the address the test process has on their LAN."""

    hosts: dict[str, Host]
    outside: str

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]


def _ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NamespacesUnavailable(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout


def _free_subnet() -> str:
    """`10.213.N` for the first N no route of this machine already covers."""
    routes = _ip("-4", "route", "show", "table", "all")
    for n in range(256):
        if f"10.213.{n}." not in routes:
            return f"10.213.{n}"
    raise NamespacesUnavailable("no free 10.213.N.0/24 subnet")


def check_available() -> None:
    """Raise `NamespacesUnavailable` saying why, unless namespaces can be made here."""
    if shutil.which("ip") is None:
        raise NamespacesUnavailable("`ip` (iproute2) is not installed")
    probe = f"pushrec-probe-{os.getpid()}"
    _ip("netns", "add", probe)
    _ip("netns", "del", probe)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _remove(namespace: str) -> None:
    """Kill what runs in `namespace`, then delete it (its veth ends and their peers go
    with it)."""
    Host(namespace, "").kill()
    _ip("netns", "del", namespace, check=False)


def _remove_stale() -> None:
    """Remove the namespaces of earlier test processes that died without cleaning up."""
    for line in _ip("netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        owner = re.match(r"pushrec-pm(\d+)-", name)
        if owner and not _alive(int(owner[1])):
            _remove(name)


@contextmanager
def network(names: Sequence[str]) -> Iterator[Network]:
    """Create one namespace per name on a private LAN; remove them all on exit."""
    check_available()
    _remove_stale()
    tag = f"pm{os.getpid()}"  # interface names: at most 15 characters (pid: 7 digits)
    subnet = _free_subnet()
    lan = f"pushrec-{tag}-lan"
    with ExitStack() as stack:
        created: list[str] = []

        def remove_all() -> None:
            for namespace in reversed(created):
                _remove(namespace)
            _ip("link", "del", f"{tag}out", check=False)  # gone with its peer, normally

        stack.callback(remove_all)
        _ip("netns", "add", lan)
        created.append(lan)
        _ip("-n", lan, "link", "add", "br0", "type", "bridge")
        _ip("-n", lan, "link", "set", "br0", "up")
        hosts: dict[str, Host] = {}
        for k, name in enumerate(names, start=10):
            namespace = f"pushrec-{tag}-{name}"
            _ip("netns", "add", namespace)
            created.append(namespace)
            inner, port = f"{tag}h{k}", f"{tag}p{k}"
            _ip("link", "add", inner, "netns", namespace, "type", "veth", "peer", "name", port,
                "netns", lan)  # fmt: skip
            _ip("-n", lan, "link", "set", port, "master", "br0", "up")
            address = f"{subnet}.{k}"
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", inner)
            _ip("-n", namespace, "link", "set", inner, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
            hosts[name] = Host(namespace, address)
        outside = f"{subnet}.1"
        _ip("link", "add", f"{tag}out", "type", "veth", "peer", "name", f"{tag}in", "netns", lan)
        _ip("-n", lan, "link", "set", f"{tag}in", "master", "br0", "up")
        _ip("addr", "add", f"{outside}/24", "dev", f"{tag}out")
        _ip("link", "set", f"{tag}out", "up")
        yield Network(hosts, outside)
