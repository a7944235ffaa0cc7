"""The demo's network: three network namespaces built with pyroute2, joined by veth pairs.

    clients 198.51.100.10-29, 2001:db8:c::10-17          (namespace rwdemo-PID-XXXX-client)
        | c-eth            198.51.100.0/24, 2001:db8:c::/64
        | m-c .1 / ::1
    middlebox: forwards, and tampers through NFQUEUE      (namespace ...-middlebox)
        | m-s .1 / ::1
        | s-eth            203.0.113.0/24, 2001:db8:5::/64
    server 203.0.113.10, 2001:db8:5::10, runs the agent   (namespace ...-server)

Documentation prefixes (RFC 5737, RFC 3849) so no real address appears. Each namespace is
routed only to the lab's own subnets, with no default route: nothing sent inside can leave the
lab. The host namespace is never changed: veth pairs are created directly inside the lab's
namespaces, and sysctls are written from a thread that has entered the namespace.

Names carry the creator's pid (``rwdemo-<pid>-<hex>-<role>``), so a later run can tell the
leftovers of a crashed demo (creator gone) from a demo running right now.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Callable, Optional, TypeVar

PREFIX = "rwdemo-"
"""Every namespace the demo creates starts with this (the test lab uses ``rwlab-``)."""

ROLES = ("client", "middlebox", "server")

CLIENT_NET4, CLIENT_NET6 = "198.51.100.0/24", "2001:db8:c::/64"
SERVER_NET4, SERVER_NET6 = "203.0.113.0/24", "2001:db8:5::/64"
MB_CLIENT4, MB_CLIENT6 = "198.51.100.1", "2001:db8:c::1"
MB_SERVER4, MB_SERVER6 = "203.0.113.1", "2001:db8:5::1"
SERVER4, SERVER6 = "203.0.113.10", "2001:db8:5::10"
CLIENTS4 = tuple(f"198.51.100.{n}" for n in range(10, 30))
CLIENTS6 = tuple(f"2001:db8:c::{n:x}" for n in range(0x10, 0x18))
SPOOFED4 = "198.51.100.250"
"""A client-side address nobody holds: SYNs forged from it never get an answer back."""

CLIENT_IF, MB_CLIENT_IF, MB_SERVER_IF, SERVER_IF = "c-eth", "m-c", "m-s", "s-eth"

_KILL_GRACE_S = 3.0
_PR_SET_PDEATHSIG = 1

T = TypeVar("T")


class LabError(RuntimeError):
    """The lab could not be built, or a program in it failed to start."""


def _netns() -> Any:
    from pyroute2 import netns

    return netns


def list_namespaces() -> list[str]:
    return sorted(str(name) for name in _netns().listnetns())


def in_namespace(name: str, work: Callable[[], T]) -> T:
    """Run `work` in a short-lived thread that has entered namespace `name` (setns changes
    only the calling thread, so the rest of the process stays in the host namespace). Sockets
    it creates belong to that namespace for their whole life, whichever thread uses them."""
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            _netns().setns(name, flags=0)
            result.append(work())
        except BaseException as error:  # handed to the caller's thread
            errors.append(error)

    thread = threading.Thread(target=target, name=f"setns-{name}", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_demo_process(pid: int) -> bool:
    """Whether `pid` is alive and a resetwatch process (a reused pid is someone else's)."""
    if not _pid_alive(pid):
        return False
    try:
        return b"resetwatch" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def namespace_pids(name: str) -> list[int]:
    return [int(pid) for pid in _netns().ns_pids().get(name, [])]


def remove_namespace(name: str) -> None:
    """Stop every process inside `name` (by pid: all of them are the demo's), then delete it.
    Refuses names without the demo prefix."""
    if not name.startswith(PREFIX):
        raise LabError(f"refusing to remove namespace {name!r}: not a demo namespace")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = namespace_pids(name)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + _KILL_GRACE_S
        while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
            time.sleep(0.05)
    with contextlib.suppress(FileNotFoundError):
        _netns().remove(name)


def owner_pid(name: str) -> Optional[int]:
    head = name[len(PREFIX) :].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def cleanup_stale() -> list[str]:
    """Remove the namespaces (and temporary directories) of demos whose creator is gone (a
    crash, a SIGKILL); a running demo's are left alone. Returns the namespaces removed."""
    removed = []
    for name in list_namespaces():
        if not name.startswith(PREFIX):
            continue
        owner = owner_pid(name)
        if owner is not None and owner != os.getpid() and _is_demo_process(owner):
            continue
        remove_namespace(name)
        removed.append(name)
    # The temporary directories of those runs (records, logs) too.
    for path in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        owner = owner_pid(path.name)
        if owner is None or owner == os.getpid() or _is_demo_process(owner):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    return removed


_libc: Optional[ctypes.CDLL] = None


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the demo dies, even by SIGKILL (the
    process survives `ip netns exec`'s exec). The library is loaded in the parent beforehand,
    so the child only makes one system call."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _add_veth(ns: Any, ifname: str, peer: dict[str, str]) -> None:
    ns.link("add", ifname=ifname, kind="veth", peer=peer)


def _configure_link(
    ns: Any, ifname: str, addresses: Sequence[str], routes: Sequence[tuple[str, str]]
) -> None:
    """Loopback and `ifname` up, `addresses` on `ifname`, and `routes` (network, gateway)."""
    (lo,) = ns.link_lookup(ifname="lo")
    ns.link("set", index=lo, state="up")
    (index,) = ns.link_lookup(ifname=ifname)
    for addr in addresses:
        v6 = ":" in addr
        family = socket.AF_INET6 if v6 else socket.AF_INET
        ns.addr("add", index=index, address=addr, prefixlen=64 if v6 else 24, family=family)
    ns.link("set", index=index, state="up")
    # Only the lab's far subnet, through the middlebox: no default route anywhere.
    for net, via in routes:
        family = socket.AF_INET6 if ":" in net else socket.AF_INET
        ns.route("add", dst=net, gateway=via, family=family)


class Lab:
    """The three namespaces. `build()` creates them; `close()` stops every program started
    with `popen` and removes the namespaces (idempotent; also after a failed build)."""

    def __init__(self) -> None:
        self.id = f"{os.getpid()}-{secrets.token_hex(2)}"
        self.prefix = f"{PREFIX}{self.id}"
        """Start of every namespace name; also in the programs' command lines, so leftovers
        can be found."""
        self.names = {role: f"{self.prefix}-{role}" for role in ROLES}
        self._created: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._closed = False

    # ------------------------------------------------------------------------------ build

    def _ip(self, role: str, work: Callable[[Any], T]) -> T:
        """`work(ipr)` with a pyroute2 IPRoute opened inside the namespace (in a thread that
        entered it: pyroute2's NetNS would fork this whole process instead)."""
        from pyroute2 import IPRoute

        def inside() -> T:
            with IPRoute() as ipr:
                return work(ipr)

        return in_namespace(self.names[role], inside)

    @property
    def built(self) -> bool:
        """Whether `build` created anything (so there was something to remove)."""
        return bool(self._created)

    def build(self) -> None:
        from pyroute2 import netns

        for role in ROLES:
            name = self.names[role]
            netns.create(name)
            self._created.append(name)
            # Before any interface exists: IPv6 addresses usable at once (no DAD wait), and
            # no router advertisements taken from anywhere.
            self.sysctl(role, "net.ipv6.conf.default.accept_dad", "0")
            self.sysctl(role, "net.ipv6.conf.default.accept_ra", "0")
        self.sysctl("middlebox", "net.ipv4.ip_forward", "1")
        self.sysctl("middlebox", "net.ipv6.conf.all.forwarding", "1")
        # Each veth is created inside one lab namespace with its peer put straight into
        # the other: no interface ever appears in the host namespace.
        for role, ifname, peer_role, peer_if in (
            ("client", CLIENT_IF, "middlebox", MB_CLIENT_IF),
            ("middlebox", MB_SERVER_IF, "server", SERVER_IF),
        ):
            peer = {"ifname": peer_if, "net_ns_fd": self.names[peer_role]}
            self._ip(role, functools.partial(_add_veth, ifname=ifname, peer=peer))
        self._configure("client", CLIENT_IF, [*CLIENTS4, *CLIENTS6], routes=(
            (SERVER_NET4, MB_CLIENT4), (SERVER_NET6, MB_CLIENT6)))  # fmt: skip
        self._configure("middlebox", MB_CLIENT_IF, [MB_CLIENT4, MB_CLIENT6])
        self._configure("middlebox", MB_SERVER_IF, [MB_SERVER4, MB_SERVER6])
        self._configure("server", SERVER_IF, [SERVER4, SERVER6], routes=(
            (CLIENT_NET4, MB_SERVER4), (CLIENT_NET6, MB_SERVER6)))  # fmt: skip

    def _configure(
        self,
        role: str,
        ifname: str,
        addresses: Sequence[str],
        routes: Sequence[tuple[str, str]] = (),
    ) -> None:
        self._ip(role, lambda ns: _configure_link(ns, ifname, addresses, routes))

    def sysctl(self, role: str, key: str, value: str) -> None:
        path = "/proc/sys/" + key.replace(".", "/")

        def write() -> None:
            with open(path, "w", encoding="ascii") as handle:
                handle.write(value)

        in_namespace(self.names[role], write)

    # ------------------------------------------------------------------------------ facts

    def mac(self, role: str, ifname: str) -> str:
        def read(ns: Any) -> str:
            (index,) = ns.link_lookup(ifname=ifname)
            return str(ns.get_links(index)[0].get("address"))

        return self._ip(role, read)

    # ------------------------------------------------------------------------------ programs

    def popen(self, role: str, argv: Sequence[str], *, log: Path, **kw: Any) -> Any:
        """Start `argv` inside a namespace, in its own session (the terminal's Ctrl-C reaches
        only the demo, which stops its programs in order), stderr to `log`. Call it from the
        main thread: the death signal follows the thread that started the child."""
        global _libc
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        handle: IO[str] = open(log, "w", encoding="utf-8")  # noqa: SIM115
        try:
            proc: subprocess.Popen[Any] = subprocess.Popen(
                ["ip", "netns", "exec", self.names[role], *argv],
                start_new_session=True,
                preexec_fn=_die_with_parent,
                stderr=handle,
                **kw,
            )
        finally:
            handle.close()
        self._procs.append(proc)
        return proc

    def socket(self, role: str, family: int = socket.AF_INET) -> socket.socket:
        """A TCP socket living in a namespace (for the forwarder and the metrics scrapes)."""
        return in_namespace(self.names[role], lambda: socket.socket(family, socket.SOCK_STREAM))

    # ------------------------------------------------------------------------------ teardown

    def close(self) -> None:
        """Safe to call again after an interrupted call: every step is idempotent."""
        if self._closed:
            return
        for proc in reversed(self._procs):
            stop(proc)
        # By prefix, not only `_created`: an interrupt can land between creating a namespace
        # and noting it.
        for name in reversed(sorted({*self._created, *self.leftovers()})):
            with contextlib.suppress(Exception):
                remove_namespace(name)
        self._closed = True

    def leftovers(self) -> list[str]:
        """This lab's namespaces that exist now."""
        mine = f"{self.prefix}-"
        return [name for name in list_namespaces() if name.startswith(mine)]


def stop(proc: Any, grace: float = _KILL_GRACE_S) -> Optional[int]:
    """SIGTERM, then SIGKILL after `grace` seconds; the exit code (None if it never ended)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(Exception):
                pipe.close()
    code = proc.poll()
    return None if code is None else int(code)
