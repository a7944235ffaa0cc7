"""What every rules backend shares: the command runner, the error type and the interface.

Backends never call `subprocess` themselves; they go through a `Runner`. That one seam lets the
daemon run the tools inside a network namespace (`netns_runner`) and lets tests see every argv.
"""

from __future__ import annotations

import subprocess
from abc import ABC, abstractmethod
from typing import Callable, Optional

from .spec import RuleSpec

Runner = Callable[[list[str], Optional[str]], "subprocess.CompletedProcess[str]"]
"""Runs argv with the given stdin text (or none) and returns its exit code, stdout and stderr.

A runner must not raise for a non-zero exit; it may raise `FileNotFoundError` (or `OSError`)
when the program does not exist.
"""

LOCK_WAIT = 5
"""Seconds an iptables tool waits for the xtables lock (`-w 5`) before it fails. The agent
checks its rules in a thread of its own (rules/keeper.py), never in the packet loop: a lock
held by another program (a firewall reload) becomes a counted timeout and a later retry."""

COMMAND_TIMEOUT = 15.0
"""Seconds one tool may take in all, lock wait included: a hung tool must become an error the
daemon can report, not a hung agent."""


class RulesError(Exception):
    """A rules tool failed. The message is one line: the command and the first useful line of
    its stderr, so it fits a log line and a `resetwatch rules check` answer. `timed_out` says
    the tool gave up waiting (the xtables lock held elsewhere) or never answered: the state
    of the rules is then unknown, not wrong."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


LOCK_HELD = "xtables lock"
"""What iptables says when it stopped waiting for the lock ("Another app is currently
holding the xtables lock. Stopped waiting after 5s.")."""


def run_local(argv: list[str], stdin: Optional[str]) -> subprocess.CompletedProcess[str]:
    """The default runner: the command on this host, in the agent's own network namespace."""
    return subprocess.run(
        argv,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        check=False,
        timeout=COMMAND_TIMEOUT,
    )


def netns_runner(namespace: str, inner: Runner = run_local) -> Runner:
    """A runner that runs every command inside the named network namespace (`ip netns exec`).

    Rules belong to a network namespace, so an agent watching a container's traffic (or a test)
    must install them there rather than on the host.
    """

    def run(argv: list[str], stdin: Optional[str]) -> subprocess.CompletedProcess[str]:
        return inner(["ip", "netns", "exec", namespace, *argv], stdin)

    return run


def first_useful_line(text: str) -> str:
    """The first non-empty stderr line that is not a warning.

    iptables prints "Warning: cannot open /etc/xtables/connlabel.conf" for every numeric label,
    which is harmless and would hide the real error if we took the very first line.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if not line.lower().startswith("warning:"):
            return line
    return lines[0] if lines else "(no error output)"


CONNLABEL_FILES = ("/etc/xtables/connlabel.conf", "/etc/connlabel.conf")
"""Where iptables and nft look up label names; when a file names our bit, they print the name."""


def connlabel_bits(paths: tuple[str, ...] = CONNLABEL_FILES) -> dict[str, int]:
    """Label name -> bit from the connlabel files ("7 sampled" lines), for reading listings.

    Numeric labels need no file; this only lets `check` understand a listing that shows a
    name because an administrator gave our bit one.
    """
    names: dict[str, int] = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split("#", 1)[0].split()
            if len(words) >= 2 and words[0].isdigit():
                names.setdefault(words[1], int(words[0]))
    return names


class RulesBackend(ABC):
    """Installs, removes, shows and checks the sampling rules with one netfilter front end."""

    name: str = ""
    """"iptables" or "nft": what `backend_for` accepts and what the daemon reports."""

    def __init__(self, runner: Runner = run_local) -> None:
        self.runner = runner

    def run(
        self, argv: list[str], stdin: Optional[str] = None, *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run one command; failures become a one-line `RulesError` unless `check` is false."""
        command = " ".join(argv)
        try:
            result = self.runner(argv, stdin)
        except FileNotFoundError as err:
            raise RulesError(f"`{command}` failed: {argv[0]} not found ({err})") from err
        except subprocess.TimeoutExpired as err:
            raise RulesError(
                f"`{command}` failed: no answer after {err.timeout:g} s", timed_out=True
            ) from err
        except OSError as err:
            raise RulesError(f"`{command}` failed: {err}") from err
        if check and result.returncode != 0:
            raise self.error(argv, result, stdin)
        return result

    def error(
        self, argv: list[str], result: subprocess.CompletedProcess[str], stdin: Optional[str]
    ) -> RulesError:
        """The one-line error for a command that exited non-zero."""
        return RulesError(
            f"`{' '.join(argv)}` failed (exit {result.returncode}): "
            f"{self.explain(first_useful_line(result.stderr or ''), stdin)}",
            timed_out=LOCK_HELD in (result.stderr or ""),
        )

    def explain(self, message: str, stdin: Optional[str]) -> str:
        """Hook for a backend to make a tool's error message point at our input."""
        return message

    @abstractmethod
    def render(self, spec: RuleSpec) -> str:
        """The exact text fed to the tool by `install` on a host without our rules (dry run)."""

    @abstractmethod
    def install(self, spec: RuleSpec) -> None:
        """Make the installed rules equal the spec; running it twice leaves one copy."""

    @abstractmethod
    def remove(self) -> None:
        """Delete our rules and nothing else; a no-op when they are absent."""

    @abstractmethod
    def show(self) -> str:
        """Our installed rules with their counters, as the tool prints them."""

    @abstractmethod
    def check(self, spec: RuleSpec) -> list[str]:
        """Human-readable differences between the installed rules and the spec (empty: equal)."""

    def set_full(self) -> Optional[int]:
        """Sampled SYNs the stateless sampler could not add because its set was full, counted
        by the kernel since the last install; None where there is no such set."""
        return None

    def candidates(self) -> Optional[int]:
        """New SYNs the sample rule could have drawn for, counted by the kernel since the
        last install; None when the rules are not installed."""
        return None

    def label_users(self, spec: RuleSpec) -> list[str]:
        """Foreign rules that set the spec's conntrack label bit, each named for an operator
        (empty for the stateless sampler, which sets no label)."""
        return []

    @abstractmethod
    def present(self) -> bool:
        """True when some rules of ours are installed (use `check` to know if they are right)."""
