"""The 15-minute history: bucketing, retention, the file (atomic, versioned, moved aside when
unreadable, save failures counted and logged once), and its use by the daemon loop."""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from resetwatch import history as history_module
from resetwatch.classify import Category, Outcome, Stage, Tag
from resetwatch.config import Config
from resetwatch.daemon import HISTORY_SAVE_EVERY, Agent
from resetwatch.flows import Exclusion
from resetwatch.history import (
    BUCKET_SECONDS,
    FILE_NAME,
    RETENTION_SECONDS,
    History,
    HistoryFile,
    bucket_start,
    from_document,
    to_document,
)

from .history_data import epoch, exclude, judge
from .test_agent_golden import FakeClock, ScriptedSource, scenario

NOW = epoch("2026-11-22T10:07:30")


def nonzero(counts: dict[Any, int]) -> dict[Any, int]:
    return {key: n for key, n in counts.items() if n}


# ---- bucketing and retention --------------------------------------------------------------

BUCKETING = [
    ("2026-11-22T10:00:00", "2026-11-22T10:00:00"),  # an edge belongs to the bucket it starts
    ("2026-11-22T10:14:59", "2026-11-22T10:00:00"),
    ("2026-11-22T10:15:00", "2026-11-22T10:15:00"),
    ("2026-11-22T23:59:59", "2026-11-22T23:45:00"),
    ("1970-01-01T00:00:01", "1970-01-01T00:00:00"),
]


@pytest.mark.parametrize("when,start", BUCKETING)
def test_a_flow_lands_in_the_bucket_of_its_last_packet(when: str, start: str) -> None:
    history = History()
    judge(history, epoch(when), Category.POST_ACK)
    assert list(history.snapshot().buckets) == [int(epoch(start))]
    assert bucket_start(epoch(when)) == int(epoch(start))


def test_the_clock_converter_is_applied() -> None:
    history = History(to_wall=lambda ts: ts + 1_000_000)
    judge(history, 5.0, Category.NO_MATCH)
    assert list(history.snapshot().buckets) == [bucket_start(1_000_005.0)]


def test_counts_by_category_outcome_tag_and_exclusion() -> None:
    history = History()
    judge(history, NOW, Category.POST_PSH, 2, tags=(Tag.RESET, Tag.SINGLE_RST))
    judge(history, NOW, Category.NO_MATCH)
    exclude(history, NOW, Exclusion.TRUNCATED, 3)
    (bucket,) = history.snapshot().buckets.values()
    assert nonzero(bucket.categories()) == {Category.POST_PSH: 2, Category.NO_MATCH: 1}
    assert nonzero(bucket.outcomes()) == {
        (Stage.POST_PSH, Outcome.RESET): 2,
        (Stage.LATER, Outcome.CLOSED): 1,
    }
    assert nonzero(bucket.tags()) == {
        (Category.POST_PSH, Tag.RESET): 2,
        (Category.POST_PSH, Tag.SINGLE_RST): 2,
    }
    assert nonzero(bucket.excluded_by()) == {Exclusion.TRUNCATED: 3}
    assert (bucket.classified, bucket.excluded_total) == (3, 3)


RETENTION = [
    # (age of the flow in seconds at prune time, kept?)
    (0, True),
    (RETENTION_SECONDS - BUCKET_SECONDS, True),
    (RETENTION_SECONDS, True),  # its bucket still overlaps the last 7 days
    (RETENTION_SECONDS + 2 * BUCKET_SECONDS, False),
    (30 * 86400, False),
]


@pytest.mark.parametrize("age,kept", RETENTION)
def test_buckets_older_than_seven_days_are_dropped(age: int, kept: bool) -> None:
    history = History()
    judge(history, NOW - age, Category.POST_SYN)
    dropped = history.prune(NOW)
    assert (len(history), dropped) == ((1, 0) if kept else (0, 1))


def test_a_snapshot_is_a_copy() -> None:
    history = History()
    judge(history, NOW, Category.POST_SYN)
    snap = history.snapshot()
    judge(history, NOW, Category.POST_SYN)
    assert snap.total(0, 2**40).classified == 1
    assert history.snapshot().total(0, 2**40).classified == 2


def test_snapshot_selects_buckets_by_start() -> None:
    history = History()
    for minutes in (0, 15, 30, 45):
        judge(history, NOW + 60 * minutes, Category.POST_SYN)
    start = bucket_start(NOW) + BUCKET_SECONDS
    snap = history.snapshot(start, start + 2 * BUCKET_SECONDS)
    assert sorted(snap.buckets) == [start, start + BUCKET_SECONDS]


def test_readers_on_another_thread_always_see_whole_flows() -> None:
    """Each judged flow adds one to a category and one to an outcome: a snapshot taken while
    the writer runs must never see one without the other."""
    history = History()
    done = threading.Event()

    def write() -> None:
        for i in range(20000):
            judge(history, NOW + (i % 8) * BUCKET_SECONDS, Category.POST_ACK)
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    torn = []
    while not done.is_set():
        for bucket in history.snapshot().buckets.values():
            if bucket.classified != sum(bucket.outcomes().values()):
                torn.append(bucket)
    writer.join()
    assert torn == []
    assert history.snapshot().total(0, 2**40).classified == 20000


# ---- the document ---------------------------------------------------------------------------


def filled() -> History:
    history = History()
    judge(history, NOW, Category.POST_PSH, 2, tags=(Tag.RESET, Tag.MULTIPLE_RSTS, Tag.ACKNUMSAME))
    judge(history, NOW - 3600, Category.POST_SYN, tags=(Tag.TIMEOUT,))
    exclude(history, NOW - 86400, Exclusion.EVICTED, 4)
    return history


def test_the_document_round_trips() -> None:
    history = filled()
    doc = json.loads(json.dumps(to_document(history.snapshot(), NOW)))
    buckets, skipped = from_document(doc)
    assert skipped == 0
    assert buckets == history.snapshot().buckets
    assert doc["format"] == "resetwatch-history" and doc["version"] == 2


def test_unknown_names_are_skipped_not_fatal() -> None:
    doc = to_document(filled().snapshot(), NOW)
    doc["buckets"][0]["judged"].append(["4", "post_future", "reset", "post_syn", [], "", "", 5])
    doc["buckets"][0]["judged"].append(
        ["6", "post_syn", "reset", "post_syn", ["new_tag"], "", "", 2]
    )
    doc["buckets"][0]["excluded"].append(["4", "new_reason", 4])
    buckets, skipped = from_document(doc)
    assert skipped == 11
    assert sum(b.classified for b in buckets.values()) == 3


def test_a_newer_version_is_refused_by_name() -> None:
    doc = to_document(filled().snapshot(), NOW)
    doc["version"] = 3
    with pytest.raises(history_module.DocumentError, match="version 3"):
        from_document(doc)


# ---- the file -----------------------------------------------------------------------------


def saved_counts(path: Path) -> int:
    buckets, _ = from_document(json.loads(path.read_text()))
    return sum(b.classified + b.excluded_total for b in buckets.values())


def test_save_then_load_into_a_new_history(tmp_path: Path) -> None:
    store = HistoryFile(str(tmp_path), lambda: NOW)
    assert store.save(filled())
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE_NAME]  # no temporary left
    again = History()
    HistoryFile(str(tmp_path), lambda: NOW).load(again)
    assert again.snapshot().buckets == filled().snapshot().buckets


def test_a_missing_file_is_normal_and_a_missing_directory_is_created(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "a" / "b"
    store = HistoryFile(str(directory), lambda: NOW)
    with caplog.at_level(logging.INFO, logger="resetwatch"):
        history = History()
        store.load(history)
    assert len(history) == 0 and directory.is_dir()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert store.save(filled()) and (directory / FILE_NAME).exists()


def test_old_buckets_are_dropped_when_loaded(tmp_path: Path) -> None:
    HistoryFile(str(tmp_path), lambda: NOW).save(filled())
    history = History()
    HistoryFile(str(tmp_path), lambda: NOW + RETENTION_SECONDS - 1800).load(history)
    # Only the bucket of NOW is still within 7 days an (almost) week later.
    assert list(history.snapshot().buckets) == [bucket_start(NOW)]


CORRUPT = {
    "not json": b"{\"format\": \"resetwatch-hist",
    "not utf-8": b"\xff\xfe\x00garbage",
    "empty": b"",
    "another format": b'{"format": "something-else", "version": 1}',
    "newer version": json.dumps(
        {"format": "resetwatch-history", "version": 99, "bucketSeconds": 900, "buckets": []}
    ).encode(),
    "other bucket size": json.dumps(
        {"format": "resetwatch-history", "version": 1, "bucketSeconds": 60, "buckets": []}
    ).encode(),
    "negative count": json.dumps(
        {"format": "resetwatch-history", "version": 1, "bucketSeconds": 900,
         "buckets": [{"start": 900, "categories": {"post_syn": -1}}]}
    ).encode(),
    "unaligned bucket": json.dumps(
        {"format": "resetwatch-history", "version": 1, "bucketSeconds": 900,
         "buckets": [{"start": 901}]}
    ).encode(),
    "a list": b"[1, 2, 3]",
}


@pytest.mark.parametrize("content", CORRUPT.values(), ids=list(CORRUPT))
def test_an_unreadable_file_is_moved_aside_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = tmp_path / FILE_NAME
    path.write_bytes(content)
    history = History()
    with caplog.at_level(logging.INFO, logger="resetwatch"):
        HistoryFile(str(tmp_path), lambda: NOW).load(history)
    assert len(history) == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and str(path) in errors[0] and "moved to" in errors[0], errors
    assert not path.exists()
    assert (tmp_path / f"{FILE_NAME}.bad").read_bytes() == content


def test_a_second_bad_file_does_not_replace_the_first(tmp_path: Path) -> None:
    for content in (b"first", b"second"):
        (tmp_path / FILE_NAME).write_bytes(content)
        HistoryFile(str(tmp_path), lambda: NOW).load(History())
    assert (tmp_path / f"{FILE_NAME}.bad").read_bytes() == b"first"
    assert (tmp_path / f"{FILE_NAME}.bad.1").read_bytes() == b"second"


def test_a_failed_save_leaves_the_old_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = HistoryFile(str(tmp_path), lambda: NOW)
    assert store.save(filled())
    before = (tmp_path / FILE_NAME).read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(history_module.os, "fsync", full)
    bigger = filled()
    judge(bigger, NOW, Category.NO_MATCH, 10)
    assert not store.save(bigger)
    assert (tmp_path / FILE_NAME).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE_NAME]


def _file_in_the_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    # Root ignores permission bits, but not a regular file where a directory should be.
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    return blocker.unlink


def _full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(history_module.os, "fsync", full)
    return monkeypatch.undo


@pytest.mark.parametrize("breakage", [_file_in_the_way, _full_disk], ids=["not-a-dir", "full"])
def test_save_failures_are_counted_and_logged_once_per_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    breakage: Any,
) -> None:
    repair = breakage(tmp_path, monkeypatch)
    store = HistoryFile(str(tmp_path / "blocker" / "state"), lambda: NOW)
    with caplog.at_level(logging.INFO, logger="resetwatch"):
        store.load(History())  # never raises, whatever the directory
        caplog.clear()
        results = [store.save(filled()) for _ in range(3)]
    assert results == [False, False, False]
    assert store.save_errors == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "cannot save" in errors[0], errors

    repair()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="resetwatch"):
        assert store.save(filled())
        assert store.save(filled())
    assert [r.getMessage() for r in caplog.records] == [f"history: saved {store.path} again"]
    assert store.save_errors == 3


# ---- in the daemon --------------------------------------------------------------------------


def make_agent(state_dir: Any, clock: FakeClock, batches: Any = None) -> Agent:
    source = ScriptedSource(scenario() if batches is None else batches, clock)
    config = Config(listen="127.0.0.1:0", no_rules=True, idle_timeout=30.0, close_linger=5.0,
                    state_dir=str(state_dir))
    return Agent(config, clock=clock, wall=lambda: NOW, open_source=lambda c, k: source)


def test_the_loop_saves_every_minute_of_its_clock_and_at_stop(tmp_path: Path) -> None:
    clock = FakeClock()
    agent = make_agent(tmp_path, clock)
    path = tmp_path / FILE_NAME
    agent.start()
    try:
        saves = []
        for _ in range(int(HISTORY_SAVE_EVERY) + 5):  # each step is a second on the fake clock
            agent.step()
            agent.saver.wait()  # the save runs in a worker thread, off the loop
            saves.append(path.exists())
        first = saves.index(True)
        assert HISTORY_SAVE_EVERY - 2 <= first <= HISTORY_SAVE_EVERY + 1, first
        # By then every flow has ended (the two post-SYN ones by the 30 s idle timeout).
        assert saved_counts(path) == 6
        path.unlink()
    finally:
        agent.stop()
    assert saved_counts(path) == 6  # written again by the stop


def test_a_restarted_agent_keeps_its_counts(tmp_path: Path) -> None:
    clock = FakeClock()
    first = make_agent(tmp_path, clock)
    first.start()
    for _ in range(12):
        first.step()
    first.stop()
    second = make_agent(tmp_path, clock, batches=[])
    second.start()
    try:
        total = second.history.snapshot().total(0, 2**40)
        assert total.classified == 3
        assert nonzero(total.excluded_by()) == {Exclusion.NO_SYN: 1, Exclusion.TRUNCATED: 2}
    finally:
        second.stop()
    assert saved_counts(tmp_path / FILE_NAME) == 6  # saved again, not doubled


def test_an_agent_with_a_corrupt_file_starts_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / FILE_NAME).write_text("{not json")
    agent = make_agent(tmp_path, FakeClock(), batches=[])
    with caplog.at_level(logging.INFO, logger="resetwatch"):
        agent.start()
    try:
        assert len(agent.history) == 0
        assert (tmp_path / f"{FILE_NAME}.bad").read_text() == "{not json"
        assert any("moved to" in r.getMessage() for r in caplog.records)
    finally:
        agent.stop()


def test_an_agent_that_never_started_does_not_overwrite_the_file(tmp_path: Path) -> None:
    HistoryFile(str(tmp_path), lambda: NOW).save(filled())
    before = (tmp_path / FILE_NAME).read_bytes()
    make_agent(tmp_path, FakeClock()).stop()
    assert (tmp_path / FILE_NAME).read_bytes() == before


def test_an_empty_state_dir_keeps_the_history_in_memory() -> None:
    clock = FakeClock()
    agent = make_agent("", clock)
    assert agent.history_file is None
    agent.start()
    for _ in range(12):
        agent.step()
    agent.stop()
    assert agent.history.snapshot().total(0, 2**40).classified == 3


# ---- files that must not be trusted -------------------------------------------------------


def test_buckets_in_the_future_are_dropped_and_said(tmp_path: Path, caplog) -> None:
    history = History()
    for minutes in (0, 30, 60 * 24 * 400):  # now, half an hour ahead, a year ahead
        judge(history, NOW + 60 * minutes, Category.POST_ACK)
    (tmp_path / FILE_NAME).write_text(json.dumps(to_document(history.snapshot(), NOW)))
    again = History()
    with caplog.at_level(logging.WARNING, "resetwatch"):
        HistoryFile(str(tmp_path), lambda: NOW).load(again)
    assert list(again.snapshot().buckets) == [bucket_start(NOW)]
    assert "dropped 2 buckets" in caplog.text


def test_a_fifo_or_a_directory_is_refused_without_blocking(tmp_path: Path, caplog) -> None:
    for make in (os.mkfifo, os.mkdir):
        directory = tmp_path / make.__name__
        directory.mkdir()
        make(directory / FILE_NAME)
        history = History()
        with caplog.at_level(logging.ERROR, "resetwatch"):
            HistoryFile(str(directory), lambda: NOW).load(history)  # would hang on a FIFO
        assert len(history) == 0
        assert "not a regular file" in caplog.text
        assert (directory / FILE_NAME).exists()  # left in place


def test_a_file_larger_than_the_retention_explains_is_refused_unread(tmp_path: Path) -> None:
    history = History(retention=86400)
    limit = (86400 // BUCKET_SECONDS + 2) * history_module.MAX_BUCKET_BYTES
    path = tmp_path / FILE_NAME
    with open(path, "wb") as handle:
        handle.truncate(limit + 1)  # sparse: no disk used
    HistoryFile(str(tmp_path), lambda: NOW).load(history)
    assert len(history) == 0
    assert not path.exists() and (tmp_path / (FILE_NAME + ".bad")).exists()
