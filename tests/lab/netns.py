"""A throw-away network of Linux network namespaces for integration tests, benchmarks and demos.

Why namespaces: the agent's whole point is the kernel path (conntrack labels, connbytes, NFLOG),
so tests drive real packets through real rules. Namespaces give every test run its own kernel
network stack: its own interfaces, routes, conntrack table, iptables rules and NFLOG groups, so
nothing touches the host's network and runs never see each other.

Traffic safety: each namespace has only the routes of the lab's own subnets (no default route),
so traffic generators inside it cannot reach any address outside the lab, whatever they are told.

Layout (the client and server addresses are the same in every lab: each lab is its own world)::

    direct:     client 10.201.1.2 fd20:1::2  <-->  server 10.201.1.1 fd20:1::1
    middlebox:  client 10.201.1.2 fd20:1::2  <-->  10.201.1.1 fd20:1::1  middlebox
                                                   10.201.2.1 fd20:2::1  <-->  server 10.201.2.2
                                                                                  fd20:2::2

Namespaces are named ``rwlab-<creator pid>-<random>-<role>``. The creator's pid in the name lets
`cleanup_stale` tell the leftovers of a crashed run (creator gone) from a lab that another run is
using right now, which it must not touch.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import secrets
import signal
import subprocess
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

PREFIX = "rwlab-"
"""Every namespace a lab creates starts with this, and nothing else may."""

ROLES = ("client", "middlebox", "server")

IP = "ip"
_KILL_GRACE_S = 2.0
_CMD_TIMEOUT_S = 30.0

Argv = Sequence[Union[str, "os.PathLike[str]"]]


class LabError(RuntimeError):
    """A lab could not be built or a command inside it failed."""


def _ip(*args: str, check: bool = True, timeout: float = _CMD_TIMEOUT_S) -> str:
    proc = subprocess.run([IP, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (``ip netns list``), without their ids."""
    out = _ip("netns", "list", check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespace_pids(ns: str) -> list[int]:
    out = _ip("netns", "pids", ns, check=False)
    return [int(tok) for tok in out.split() if tok.isdigit()]


def _kill_namespace_processes(ns: str) -> None:
    """Kill, by pid, the processes still living in a lab namespace (all of them were started by
    a lab: nothing else runs inside these namespaces). Without this a namespace outlives
    ``ip netns del`` for as long as one of its processes does."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _namespace_pids(ns)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + _KILL_GRACE_S
        while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
            time.sleep(0.05)


def delete_namespace(ns: str) -> None:
    """Kill what runs in `ns` and delete it. Refuses names outside the lab prefix."""
    if not ns.startswith(PREFIX):
        raise LabError(f"refusing to delete namespace {ns!r}: not a lab namespace")
    _kill_namespace_processes(ns)
    _ip("netns", "del", ns, check=False)


def _owner_pid(ns: str) -> Optional[int]:
    parts = ns[len(PREFIX) :].split("-")
    if len(parts) >= 2 and parts[0].isdigit():
        return int(parts[0])
    return None


def cleanup_stale() -> list[str]:
    """Delete `rwlab-*` namespaces left behind by runs that died without cleaning up.

    A namespace whose creator process is still alive belongs to a running lab (maybe another
    test session) and is left alone; so is everything without the prefix. Returns the names
    deleted."""
    removed = []
    for ns in list_namespaces():
        if not ns.startswith(PREFIX):
            continue
        owner = _owner_pid(ns)
        if owner is not None and _pid_alive(owner):
            continue
        delete_namespace(ns)
        removed.append(ns)
    return removed


@dataclass(frozen=True)
class Link:
    """One veth pair: `a_if` in namespace role `a`, `b_if` in role `b`, on one IPv4 /24 and
    one IPv6 /64."""

    a: str
    a_if: str
    a4: str
    a6: str
    b: str
    b_if: str
    b4: str
    b6: str
    net4: str
    net6: str


_open_labs: weakref.WeakSet[Lab] = weakref.WeakSet()


_labs_opened = False


@atexit.register
def _close_open_labs() -> None:
    """Last resort when a run is interrupted (KeyboardInterrupt, an error outside a ``with``):
    no lab outlives its Python process. A process that built labs also sweeps the leftovers
    of dead runs on its way out (a SIGKILLed run cannot clean up after itself)."""
    for lab in list(_open_labs):
        lab.close()
    if _labs_opened:
        with contextlib.suppress(Exception):
            cleanup_stale()


class Lab:
    """Client and server namespaces joined by veth (optionally through a forwarding middlebox).

    Use as a context manager: the namespaces and every process started through `popen` are
    removed on exit, also when the body raises. Addresses are attributes: `client4`,
    `client6`, `server4`, `server6` and, with a middlebox, `mb_client4`, `mb_client6` (the
    middlebox's client-facing side), `mb_server4`, `mb_server6`.
    """

    client4: str
    client6: str
    server4: str
    server6: str
    mb_client4: Optional[str]
    mb_client6: Optional[str]
    mb_server4: Optional[str]
    mb_server6: Optional[str]
    client_if: str
    server_if: str

    def __init__(self, middlebox: bool = False, tag: str = "") -> None:
        self.middlebox = middlebox
        suffix = secrets.token_hex(3) + (f"-{tag}" if tag else "")
        self.id = f"{os.getpid()}-{suffix}"
        roles = ROLES if middlebox else ("client", "server")
        self.namespaces: dict[str, str] = {role: f"{PREFIX}{self.id}-{role}" for role in roles}
        self.links: list[Link] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._created: list[str] = []
        self._closed = False
        self.client_if = "c-eth"
        self.server_if = "s-eth"
        self.mb_client4 = self.mb_client6 = self.mb_server4 = self.mb_server6 = None

    # ----------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        global _labs_opened
        _labs_opened = True
        _open_labs.add(self)
        for ns in self.namespaces.values():
            _ip("netns", "add", ns)
            self._created.append(ns)
            # DAD off before any interface exists: addresses usable at once, no 1-2 s wait.
            for knob in ("all", "default"):
                self._sysctl(ns, f"net.ipv6.conf.{knob}.accept_dad", "0")
            _ip("-n", ns, "link", "set", "lo", "up")
        if self.middlebox:
            mb = self.namespaces["middlebox"]
            self._sysctl(mb, "net.ipv4.ip_forward", "1")
            self._sysctl(mb, "net.ipv6.conf.all.forwarding", "1")
            self.links = [
                self._link("client", self.client_if, 2, "middlebox", "m-c", 1, 1),
                self._link("middlebox", "m-s", 1, "server", self.server_if, 2, 2),
            ]
            c, s = self.links
            self.client4, self.client6 = c.a4, c.a6
            self.mb_client4, self.mb_client6 = c.b4, c.b6
            self.mb_server4, self.mb_server6 = s.a4, s.a6
            self.server4, self.server6 = s.b4, s.b6
            # Routes for the lab's own far subnet only: no default route anywhere.
            self._route("client", s.net4, c.b4)
            self._route("client", s.net6, c.b6)
            self._route("server", c.net4, s.a4)
            self._route("server", c.net6, s.a6)
        else:
            link = self._link("client", self.client_if, 2, "server", self.server_if, 1, 1)
            self.links = [link]
            self.client4, self.client6 = link.a4, link.a6
            self.server4, self.server6 = link.b4, link.b6

    def _sysctl(self, ns: str, key: str, value: str) -> None:
        path = "/proc/sys/net/" + key.split(".", 1)[1].replace(".", "/")
        self.run(ns, ["sh", "-c", f"echo {value} > {path}"])

    def _link(
        self, a: str, a_if: str, a_host: int, b: str, b_if: str, b_host: int, net: int
    ) -> Link:
        """A veth pair from role `a` to role `b` on subnet number `net`, created directly in
        the two namespaces (never in the host's, where names could clash)."""
        ns_a, ns_b = self.namespaces[a], self.namespaces[b]
        _ip("-n", ns_a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", ns_b)
        link = Link(
            a=a,
            a_if=a_if,
            a4=f"10.201.{net}.{a_host}",
            a6=f"fd20:{net}::{a_host}",
            b=b,
            b_if=b_if,
            b4=f"10.201.{net}.{b_host}",
            b6=f"fd20:{net}::{b_host}",
            net4=f"10.201.{net}.0/24",
            net6=f"fd20:{net}::/64",
        )
        for ns, ifname, a4, a6 in ((ns_a, a_if, link.a4, link.a6), (ns_b, b_if, link.b4, link.b6)):
            _ip("-n", ns, "addr", "add", f"{a4}/24", "dev", ifname)
            _ip("-n", ns, "-6", "addr", "add", f"{a6}/64", "dev", ifname, "nodad")
            _ip("-n", ns, "link", "set", ifname, "up")
        return link

    def _route(self, role: str, net: str, via: str) -> None:
        fam = "-6" if ":" in net else "-4"
        _ip("-n", self.namespaces[role], fam, "route", "add", net, "via", via)

    def close(self) -> None:
        """Stop every tracked process, then delete the namespaces (idempotent, never raises
        for a namespace already gone)."""
        if self._closed:
            return
        self._closed = True
        for proc in reversed(self._procs):
            _stop(proc)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    with contextlib.suppress(Exception):
                        pipe.close()
        for ns in reversed(self._created):
            with contextlib.suppress(Exception):
                delete_namespace(ns)
        _open_labs.discard(self)

    # ----------------------------------------------------------------------------- running

    def ns(self, role_or_name: str) -> str:
        """The namespace name for a role ("client", "server", "middlebox") or a name."""
        if role_or_name in self.namespaces:
            return self.namespaces[role_or_name]
        if role_or_name in self.namespaces.values():
            return role_or_name
        raise LabError(f"no namespace {role_or_name!r} in this lab ({sorted(self.namespaces)})")

    def _argv(self, ns: str, argv: Argv) -> list[str]:
        return [IP, "netns", "exec", self.ns(ns), *map(os.fspath, argv)]

    def run(
        self,
        ns: str,
        argv: Argv,
        *,
        check: bool = True,
        timeout: float = _CMD_TIMEOUT_S,
        env: Optional[Mapping[str, str]] = None,
        **kw: Any,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside a namespace (text mode, output captured unless
        told otherwise); raises `LabError` with its stderr when `check` and it fails."""
        kw.setdefault("capture_output", True)
        proc = subprocess.run(
            self._argv(ns, argv),
            text=True,
            timeout=timeout,
            check=False,
            env=_clean_env(env),
            **kw,
        )
        if check and proc.returncode != 0:
            raise LabError(
                f"{' '.join(map(os.fspath, argv))} in {ns} failed ({proc.returncode}):\n"
                f"{proc.stdout}{proc.stderr}"
            )
        return proc

    def popen(
        self, ns: str, argv: Argv, *, env: Optional[Mapping[str, str]] = None, **kw: Any
    ) -> subprocess.Popen[Any]:
        """Start a command inside a namespace in its own process group. The lab stops it (and
        its children) on exit if it is still running."""
        proc: subprocess.Popen[Any] = subprocess.Popen(
            self._argv(ns, argv), start_new_session=True, env=_clean_env(env), **kw
        )
        self._procs.append(proc)
        return proc

    # ----------------------------------------------------------------------------- facts

    def owns(self, addr: str) -> bool:
        """Whether `addr` is one of the lab's own subnets: the only addresses traffic helpers
        may target."""
        ip = ipaddress.ip_address(addr)
        return any(
            ip in ipaddress.ip_network(link.net4 if ip.version == 4 else link.net6)
            for link in self.links
        )

    def server_addr(self, family: int) -> str:
        return self.server4 if family == 4 else self.server6

    def client_addr(self, family: int) -> str:
        return self.client4 if family == 4 else self.client6

    def mac(self, ns: str, ifname: str) -> str:
        out = _ip("-n", self.ns(ns), "-j", "link", "show", ifname)
        return str(json.loads(out)[0]["address"])

    def peer_mac(self, role: str = "client") -> str:
        """MAC address of the interface at the other end of `role`'s veth: the next hop's
        Ethernet address (ZMap needs it as its gateway MAC)."""
        for link in self.links:
            if link.a == role:
                return self.mac(link.b, link.b_if)
            if link.b == role:
                return self.mac(link.a, link.a_if)
        raise LabError(f"no link for {role!r}")

    def routes(self, ns: str) -> list[dict[str, Any]]:
        """All IPv4 and IPv6 routes of the main table in a namespace (for safety checks)."""
        routes: list[dict[str, Any]] = []
        for fam in ("-4", "-6"):
            routes += json.loads(_ip("-n", self.ns(ns), "-j", fam, "route", "show") or "[]")
        return routes

    def iter_namespaces(self) -> Iterator[tuple[str, str]]:
        yield from self.namespaces.items()


_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "no_proxy")


def _clean_env(env: Optional[Mapping[str, str]]) -> dict[str, str]:
    """The environment for commands in the lab, without proxy settings: a proxy would send a
    lab client's request to an address outside the lab."""
    base = dict(os.environ if env is None else env)
    for var in list(base):
        if var.lower() in _PROXY_VARS:
            del base[var]
    return base


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, _KILL_GRACE_S), (signal.SIGKILL, _KILL_GRACE_S)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
