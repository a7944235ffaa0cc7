"""Outputs and their failure policy: the records file on a full disk (/dev/full), its mode
whatever the umask, rotation at records_max_bytes, reopen for logrotate; `Guarded` counts,
logs once per episode, retries with backoff and recovers. A real file or device everywhere."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from resetwatch import cli
from resetwatch.classify import classify
from resetwatch.event import FlowEvent, judged_event
from resetwatch.flows import Flow, FlowTable
from resetwatch.outputs import BACKOFF_FIRST, OUTPUTS, OutputSet, OutputSettings
from resetwatch.records import RecordWriter

from .factory import pkt

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "lab_mixed_v4v6.pcap"


def events(count: int) -> list[FlowEvent]:
    """`count` judged flows (SYN, ACK, RST), each with its own source port."""
    flows: list[Flow] = []
    table = FlowTable(lambda flow, excluded: flows.append(flow), close_linger=0.0)
    for port in range(count):
        tuple_ = ("198.51.100.1", 1000 + port, "203.0.113.1", 443)
        for flags in ("S", "A", "R"):
            table.add(pkt(flags, tuple_=tuple_))
    table.drain(1e9)
    return [judged_event(flow, classify(flow)) for flow in flows]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def said() -> Iterator[list[str]]:
    yield []


def test_every_output_is_declared_for_the_metrics() -> None:
    assert list(OUTPUTS) == ["records"]
    states = OutputSet(Clock()).states
    assert list(states) == ["records"] and not states["records"].failing


def test_a_full_disk_is_counted_logged_once_and_never_raises(said: list[str]) -> None:
    clock = Clock()
    outputs = OutputSet(clock, say=said.append)
    outputs.configure(OutputSettings(records="/dev/full"))
    state = outputs.states["records"]
    assert not state.failing  # opening /dev/full works; writing does not
    (records,) = outputs.outputs
    for event in events(5):
        records.write(event)
    outputs.flush()  # ENOSPC: the five buffered records are lost
    assert (state.failing, state.errors, state.dropped) == (True, 1, 5)
    assert state.error == os.strerror(28)
    for event in events(3):
        records.write(event)  # waiting for the retry: dropped, not tried
    outputs.flush()
    assert (state.errors, state.dropped) == (1, 8)
    clock.now += BACKOFF_FIRST
    outputs.flush()  # the retry reopens (fine), nothing buffered to write yet
    for event in events(2):
        records.write(event)
    outputs.flush()  # ...and fails again: a second error of the same episode
    assert (state.failing, state.errors, state.dropped) == (True, 2, 10)
    outputs.close()
    assert len(said) == 1 and "output records failing: No space left on device" in said[0]


def test_a_failing_output_recovers_and_says_so_once(tmp_path: Path, said: list[str]) -> None:
    clock = Clock()
    path = tmp_path / "records.jsonl"
    outputs = OutputSet(clock, say=said.append)
    outputs.configure(OutputSettings(records=str(path)))
    (records,) = outputs.outputs
    inner = records.inner
    assert isinstance(inner, RecordWriter)
    os.close(inner._fd)  # the file goes away under the output (EBADF on the next write)
    one, two = events(2)
    records.write(one)
    outputs.flush()
    state = outputs.states["records"]
    assert (state.failing, state.errors, state.dropped) == (True, 1, 1)
    clock.now += BACKOFF_FIRST
    records.write(two)  # the retry reopens the file, then this one is written
    outputs.flush()
    assert not state.failing and state.error == ""
    outputs.close()
    assert len(path.read_text().splitlines()) == 1
    assert [line.split(" ", 2)[:2] for line in said] == [
        ["output", "records"],
        ["output", "records"],
    ]
    assert "recovered" in said[1]


def test_records_are_0640_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "new" / "records.jsonl"
    old = os.umask(0)
    try:
        writer = RecordWriter(str(path))
        writer.open()
        writer.close()
        loose = tmp_path / "loose.jsonl"
        loose.write_text("")
        loose.chmod(0o666)
        again = RecordWriter(str(loose))
        again.open()  # an existing file is made no looser than 0640
        again.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(loose.stat().st_mode) == 0o640


def test_records_rotate_at_max_bytes_and_keep_n_files(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    writer = RecordWriter(str(path), max_bytes=1000, keep=2)
    writer.open()
    for event in events(40):
        writer.write(event)
        writer.flush()
    writer.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["records.jsonl", "records.jsonl.1", "records.jsonl.2"]
    for name in files:
        assert (tmp_path / name).stat().st_size <= 1000
    lines = sum(len((tmp_path / n).read_text().splitlines()) for n in files)
    assert 0 < lines < 40  # the oldest went with the third rotation
    assert (tmp_path / "records.jsonl.1").read_text().endswith("\n")


def test_reopen_gives_a_fresh_file_after_logrotate(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    outputs = OutputSet(Clock())
    settings = OutputSettings(records=str(path))
    outputs.configure(settings)
    first, second = events(2)
    outputs.outputs[0].write(first)
    outputs.flush()
    path.rename(tmp_path / "records.jsonl.1")
    outputs.configure(settings)  # a reload with the same settings: reopen
    outputs.outputs[0].write(second)
    outputs.close()
    assert len(path.read_text().splitlines()) == 1
    assert len((tmp_path / "records.jsonl.1").read_text().splitlines()) == 1


def test_replay_to_dev_full_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    clocks = ["--idle-timeout", "5", "--close-linger", "1"]  # no truncation hint either
    code = cli.main(["replay", "--records", "/dev/full", *clocks, str(FIXTURE)])
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("resetwatch replay: --records /dev/full: No space left on device")
    assert "Traceback" not in err and "resetwatch replay" in out


def test_replay_records_under_a_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "file"
    target.write_text("")
    code = cli.main(["replay", "--records", str(target / "x.jsonl"), str(FIXTURE)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"resetwatch replay: --records {target / 'x.jsonl'}: "), err
