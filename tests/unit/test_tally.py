"""The one count model: order-free counting, merge, views, (de)serialisation, and reading
history files of every earlier version (a committed version 1 file included)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from resetwatch.classify import Category, Outcome, Stage, Tag, Verdict
from resetwatch.event import FlowEvent
from resetwatch.flows import Exclusion, Flow
from resetwatch.history import History, HistoryFile, Snapshot, from_document, to_document
from resetwatch.tally import ExcludedKey, JudgedKey, Tally

from .factory import pkt

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FLOW = Flow(pkt("S", 1.0))

verdicts = st.builds(
    Verdict,
    st.sampled_from(list(Stage)),
    st.sampled_from(list(Outcome)),
    st.sampled_from(list(Category)),
    st.sets(st.sampled_from(list(Tag))).map(lambda tags: tuple(t for t in Tag if t in tags)),
)
events = st.one_of(
    st.builds(lambda f, v: FlowEvent(FLOW, f, v, None), st.sampled_from(["4", "6"]), verdicts),
    st.builds(
        lambda f, r: FlowEvent(FLOW, f, None, r),
        st.sampled_from(["4", "6"]),
        st.sampled_from(list(Exclusion)),
    ),
)


def tally_of(items: list[FlowEvent]) -> Tally:
    tally = Tally()
    for event in items:
        tally.add(event)
    return tally


@given(st.lists(events, max_size=60), st.randoms())
def test_order_never_changes_a_tally(items: list[FlowEvent], rnd: Any) -> None:
    shuffled = list(items)
    rnd.shuffle(shuffled)
    assert tally_of(items) == tally_of(shuffled)


@given(st.lists(events, max_size=40), st.lists(events, max_size=40))
def test_merge_is_the_tally_of_both(left: list[FlowEvent], right: list[FlowEvent]) -> None:
    merged = tally_of(left)
    merged.merge(tally_of(right))
    assert merged == tally_of(left + right)
    assert merged.classified + merged.excluded_total == len(left) + len(right)


@given(st.lists(events, max_size=60))
def test_rows_round_trip_through_json(items: list[FlowEvent]) -> None:
    tally = tally_of(items)
    again, skipped = Tally.from_rows(json.loads(json.dumps(tally.to_rows())))
    assert skipped == 0 and again == tally


@given(st.lists(events, max_size=60))
def test_views_are_folded_from_the_same_counts(items: list[FlowEvent]) -> None:
    tally = tally_of(items)
    judged = [e.verdict for e in items if e.verdict is not None]
    assert sum(tally.categories().values()) == len(judged) == tally.classified
    assert sum(tally.outcomes().values()) == len(judged)
    assert tally.tag_totals() == {t: sum(t in v.tags for v in judged) for t in Tag}
    assert sum(tally.excluded_by().values()) == len(items) - len(judged)
    assert tally.categories("4")[Category.NO_MATCH] == sum(
        1 for e in items
        if e.verdict and e.family == "4" and e.verdict.category == Category.NO_MATCH
    )


# ---- version 1 history files ---------------------------------------------------------------


def v1_marginals(row: dict[str, Any]) -> tuple[Any, ...]:
    return (
        {k: v for k, v in row.get("categories", {}).items() if v},
        {(s, o): n for s, inner in row.get("outcomes", {}).items() for o, n in inner.items()},
        {(c, t): n for c, inner in row.get("tags", {}).items() for t, n in inner.items()},
        {k: v for k, v in row.get("excluded", {}).items() if v},
    )


def tally_marginals(tally: Tally) -> tuple[Any, ...]:
    return (
        {c.value: n for c, n in tally.categories().items() if n},
        {(s.value, o.value): n for (s, o), n in tally.outcomes().items() if n},
        {(c.value, t.value): n for (c, t), n in tally.tags().items() if n},
        {e.value: n for e, n in tally.excluded_by().items() if n},
    )


def test_a_version_1_file_loads_with_every_count_it_held() -> None:
    doc = json.loads((FIXTURES / "history_v1.json").read_text())
    assert doc["version"] == 1  # written by resetwatch before the one count model
    buckets, skipped = from_document(doc)
    assert skipped == 0
    assert sorted(buckets) == [row["start"] for row in doc["buckets"]]
    for row in doc["buckets"]:
        assert tally_marginals(buckets[row["start"]]) == v1_marginals(row)


def test_a_version_1_file_in_the_state_dir_is_loaded_and_saved_as_version_2(
    tmp_path: Path,
) -> None:
    doc = json.loads((FIXTURES / "history_v1.json").read_text())
    (tmp_path / "history.json").write_text(json.dumps(doc))
    history = History()
    store = HistoryFile(str(tmp_path), lambda: doc["savedAt"])
    store.load(history)
    assert len(history) == 2
    assert store.save(history)
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["version"] == 2
    again, _ = from_document(saved)
    for row in doc["buckets"]:
        assert tally_marginals(again[row["start"]]) == v1_marginals(row)


@settings(max_examples=150)
@given(st.lists(events, max_size=80))
def test_any_version_1_bucket_keeps_its_marginals(items: list[FlowEvent]) -> None:
    # A version 1 document as the old writer made it: marginals only, of consistent verdicts.
    consistent = [
        e for e in items
        if e.excluded is not None
        or (e.verdict is not None and _category(e.verdict) == e.verdict.category)
    ]  # fmt: skip
    tally = tally_of(consistent)
    marginals = tally_marginals(tally)
    row: dict[str, Any] = {"start": 0, "categories": marginals[0], "outcomes": {}, "tags": {},
                           "excluded": marginals[3]}  # fmt: skip
    for (stage, outcome), n in marginals[1].items():
        row["outcomes"].setdefault(stage, {})[outcome] = n
    for (category, tag), n in marginals[2].items():
        row["tags"].setdefault(category, {})[tag] = n
    doc = {"format": "resetwatch-history", "version": 1, "bucketSeconds": 900, "savedAt": 0,
           "buckets": [row]}  # fmt: skip
    buckets, skipped = from_document(doc)
    assert skipped == 0
    assert tally_marginals(buckets.get(0, Tally())) == marginals


def _category(verdict: Verdict) -> Category:
    if verdict.outcome == Outcome.RESET or (
        verdict.outcome == Outcome.TIMEOUT and verdict.stage != Stage.LATER
    ):
        return Category.LATER_IN_FLOW if verdict.stage == Stage.LATER else Category(
            verdict.stage.value
        )
    return Category.NO_MATCH


def test_snapshot_total_sums_the_buckets_in_range() -> None:
    a, b = Tally(), Tally()
    verdict = Verdict(Stage.POST_ACK, Outcome.RESET, Category.POST_ACK, (Tag.RESET,))
    a.add_judged(JudgedKey("4", verdict), 2)
    b.add_judged(JudgedKey("6", verdict), 3)
    b.add_excluded(ExcludedKey("6", Exclusion.NO_SYN))
    snapshot = Snapshot({0: a, 900: b})
    assert snapshot.total(0, 1800).categories()[Category.POST_ACK] == 5
    assert snapshot.total(900, 1800).excluded_total == 1
    assert to_document(snapshot, 0.0)["buckets"][1]["excluded"] == [["6", "no_syn", 1]]
