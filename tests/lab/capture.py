"""Sampling rules and NFLOG capture in a lab namespace.

The capture is what the agent itself would read: the packets the sampling rules log to an NFLOG
group, recorded by tcpdump (link type NFLOG) so `resetwatch replay` can judge them offline.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any, Optional

from .netns import Lab, LabError

LABEL = 7
"""The conntrack label bit the lab's rules use (any of 0..127 would do)."""


def install_sampling_rules(lab: Lab, ns: str = "server", group: int = 10) -> None:
    """Install the agent's own sampling rules in `ns` with probability 1 (every new connection
    sampled), through `resetwatch.rules`, so the lab exercises the rules the agent ships."""
    from resetwatch.rules import RuleSpec, backend_for, netns_runner

    backend = backend_for("iptables", runner=netns_runner(lab.namespaces[ns]))
    backend.install(RuleSpec(probability=1.0, label=LABEL, nflog_group=group))


class NflogCapture:
    """``tcpdump -i nflog:GROUP -w PATH -U`` in a namespace, as a context manager.

    Entering returns once tcpdump reports it is listening (so no early packet is missed);
    leaving sends SIGINT and waits for tcpdump to flush and exit, so the file is complete when
    the ``with`` block ends. `packets` is tcpdump's own count ("N packets captured").
    """

    def __init__(self, lab: Lab, path: Path, ns: str = "server", group: int = 10) -> None:
        self.lab = lab
        self.path = Path(path)
        self.ns = ns
        self.group = group
        self.packets: Optional[int] = None
        self._proc: Optional[subprocess.Popen[Any]] = None
        self._lines: list[str] = []
        self._listening = threading.Event()
        self._reader: Optional[threading.Thread] = None

    def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            self._lines.append(line)
            if "listening on" in line:
                self._listening.set()

    def start(self) -> NflogCapture:
        # -Z root: Debian's tcpdump otherwise drops to user tcpdump before opening the file.
        self._proc = self.lab.popen(
            self.ns,
            ["tcpdump", "-i", f"nflog:{self.group}", "-w", self.path, "-U", "-Z", "root"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if not self._listening.wait(10.0):
            self.stop()
            raise LabError(f"tcpdump did not start listening: {''.join(self._lines)!r}")
        return self

    def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5.0)
        match = re.search(r"(\d+) packets? captured", "".join(self._lines))
        self.packets = int(match.group(1)) if match else None

    @property
    def stderr(self) -> str:
        return "".join(self._lines)

    def __enter__(self) -> NflogCapture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
