"""Stable top-N membership (resetwatch.topn) under scripted volume patterns, on a fake clock."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from resetwatch.topn import OTHER, TopN

HOUR = 3600.0
DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(top: TopN, clock: Clock, step: float, steps: int, volumes: dict[str, int]) -> set[str]:
    """`steps` steps of `step` seconds, each observing every name its volume of flows; returns
    every label observe gave."""
    labels: set[str] = set()
    for _ in range(steps):
        clock.now += step
        for name, count in volumes.items():
            for _ in range(count):
                labels.add(top.observe(name))
    return labels


def test_the_top_n_enter_the_rest_is_other() -> None:
    clock = Clock()
    top = TopN(3, clock=clock)
    labels = run(top, clock, 60, 3, {"A": 10, "B": 5, "C": 3, "D": 1})
    assert top.members() == {"A", "B", "C"}
    assert top.label("D") == OTHER
    assert top.label("A") == "A"
    assert labels == {"A", "B", "C", OTHER}
    assert top.distinct_seen == 4


def test_a_new_member_is_labelled_from_the_next_ranking_on() -> None:
    # Flows before a name's entry were counted as "other": its series starts at 0 at entry.
    clock = Clock()
    top = TopN(2, clock=clock)
    assert top.observe("A") == OTHER  # the first ranking ran before A had any volume
    clock.now += 1
    assert top.observe("A") == "A"
    assert top.folded_into_other == 1


def test_a_network_oscillating_around_rank_n_does_not_flap() -> None:
    clock = Clock()
    top = TopN(3, clock=clock)
    run(top, clock, 60, 60, {"A": 50, "B": 40, "C": 20, "D": 19})
    assert top.members() == {"A", "B", "C"}
    generation = top.generation
    # For three days, C and D swap ranks 3 and 4 every two hours.
    labels: set[str] = set()
    third: Counter[str] = Counter()
    for period in range(36):
        busy, quiet = ("D", "C") if period % 2 == 0 else ("C", "D")
        for _ in range(12):
            labels |= run(top, clock, 600, 1, {"A": 50, "B": 40, busy: 30, quiet: 10})
            third[top.ranking()[2]] += 1
            assert top.members() == {"A", "B", "C"}
    assert third["C"] > 100 and third["D"] > 100  # they did swap places, for hours each
    assert top.generation == generation
    assert labels == {"A", "B", "C", OTHER}


def test_a_member_outside_the_top_2n_leaves_only_after_a_day() -> None:
    clock = Clock()
    top = TopN(2, clock=clock)
    run(top, clock, 60, 120, {"A": 10, "B": 8})
    assert top.members() == {"A", "B"}
    # B stops; four busier names push it out of the top 4 (2N) within a few hours.
    newcomers = {"A": 10, "C": 9, "D": 9, "E": 9, "F": 9}
    out_at = None
    for _ in range(24 * 60):
        run(top, clock, 60, 1, newcomers)
        if "B" not in top.ranking()[:4]:
            out_at = clock.now
            break
    assert out_at is not None and out_at - 1000.0 < 12 * HOUR
    # A day minus a few minutes later, B still holds its place (no newcomer entered)...
    while clock.now < out_at + DAY - 300:
        run(top, clock, 60, 1, newcomers)
        assert top.members() == {"A", "B"}
        assert "B" not in top.ranking()[:4]
    # ... and once the day is over it leaves, and the best-ranked non-member takes it.
    run(top, clock, 60, 10, newcomers)
    assert "B" not in top.members()
    assert len(top.members()) == 2
    assert top.members() - {"A"} <= {"C", "D", "E", "F"}


def minutes_until_out(top: TopN, clock: Clock, name: str, volumes: dict[str, int]) -> float:
    """Run minute by minute until `name` ranks outside the top 2N; returns that time."""
    for _ in range(24 * 60):
        run(top, clock, 60, 1, volumes)
        if name not in top.ranking()[: 2 * top.n]:
            return clock.now
    raise AssertionError(f"{name} stayed in the top 2N")


def test_coming_back_within_the_day_resets_the_wait() -> None:
    clock = Clock()
    top = TopN(1, clock=clock)
    run(top, clock, 60, 60, {"A": 10})
    assert top.members() == {"A"}
    others = {"B": 10, "C": 10}
    out = minutes_until_out(top, clock, "A", others)
    run(top, clock, 60, int((out + 20 * HOUR - clock.now) / 60), others)
    assert top.members() == {"A"}  # 20 hours outside the top 2
    run(top, clock, 60, 60, {"A": 100})  # back in the top 2 (first, even)
    assert top.ranking()[0] == "A"
    out = minutes_until_out(top, clock, "A", others)
    run(top, clock, 60, int((out + DAY - 120 - clock.now) / 60), others)
    assert top.members() == {"A"}  # 20 + 24 hours outside, but not a day in a row
    run(top, clock, 60, 5, others)
    assert top.members() in ({"B"}, {"C"})


def test_tick_lets_members_leave_while_idle() -> None:
    clock = Clock()
    top = TopN(1, clock=clock)
    run(top, clock, 60, 10, {"A": 1})
    run(top, clock, 60, 10, {"B": 5, "C": 5})  # A ranks third from here on
    assert top.members() == {"A"}
    clock.now += DAY - 1200
    top.tick()
    assert top.members() == {"A"}
    clock.now += 1200
    top.tick()  # nothing observed for a day: the ranking still runs, and A leaves
    assert top.members() in ({"B"}, {"C"})


def test_a_flood_of_names_stays_within_n_plus_1_labels_and_bounded_memory() -> None:
    clock = Clock()
    n = 10
    top = TopN(n, clock=clock)
    rng = random.Random(1)
    steady = {f"AS{i}": 30 - i for i in range(15)}
    other_flows = 0
    returned: Counter[str] = Counter()
    for _minute in range(2 * 24 * 60):
        clock.now += 60
        for name, count in steady.items():
            for _ in range(count):
                returned[top.observe(name)] += 1
        for _ in range(40):  # a spoofed flood: a new network almost every flow
            label = top.observe(f"flood{rng.randrange(100000)}")
            returned[label] += 1
            other_flows += label == OTHER
        assert len(top.members()) <= n
        assert len(top._scores) <= top._prune_at
    assert set(returned) <= set(steady) | {OTHER}
    assert set(top.members()) <= set(steady)
    assert len(set(returned)) <= n + 1
    assert top.folded_into_other == returned[OTHER]
    assert top.observed == sum(returned.values())
    assert other_flows <= returned[OTHER]
    assert top.distinct_seen > 50000
    # The ten busiest steady networks are the members.
    assert top.members() == {f"AS{i}" for i in range(n)}


def test_a_flood_at_one_instant_is_pruned_too() -> None:
    # All flood names tie; pruning must still shrink the table (and keep the members).
    clock = Clock()
    top = TopN(3, clock=clock, max_candidates=10)
    run(top, clock, 60, 2, {"A": 5, "B": 4, "C": 3})
    for i in range(10000):
        top.observe(f"flood{i}")
        assert len(top._scores) < 2 * 10 + 1
    assert {"A", "B", "C"} <= set(top._scores)
    assert top.members() == {"A", "B", "C"}


def test_distinct_seen_is_bounded() -> None:
    clock = Clock()
    top = TopN(2, clock=clock, max_distinct=100)
    for i in range(1000):
        top.observe(str(i))
    assert top.distinct_seen == 100


def test_volume_decays_with_the_half_life() -> None:
    clock = Clock()
    top = TopN(2, half_life=3 * HOUR, clock=clock)
    for _ in range(100):
        top.observe("A")
    assert top.score("A") == pytest.approx(100)
    clock.now += 3 * HOUR
    assert top.score("A") == pytest.approx(50)
    clock.now += 6 * HOUR
    top.observe("A", weight=100)
    assert top.score("A") == pytest.approx(112.5)


def test_scores_are_rescaled_over_a_long_run_without_changing_the_ranking() -> None:
    clock = Clock()
    top = TopN(2, half_life=1.0, clock=clock, recompute_every=0)
    for _ in range(2000):  # 2000 half-lives: 2**2000 would overflow a float
        clock.now += 1.0
        top.observe("A", weight=3)
        top.observe("B", weight=2)
        top.observe("C", weight=1)
    assert top.ranking() == ["A", "B", "C"]
    assert top.score("A") == pytest.approx(6.0)  # 3 per half-life: 3 + 1.5 + 0.75 + ...
    assert top.members() == {"A", "B"}


def test_ranking_runs_at_most_once_per_interval() -> None:
    clock = Clock()
    top = TopN(5, clock=clock, recompute_every=1.0)
    calls = 0
    recompute = top._recompute

    def counting(now: float) -> None:
        nonlocal calls
        calls += 1
        recompute(now)

    top._recompute = counting  # type: ignore[method-assign]
    for i in range(100000):
        clock.now += 0.0001  # 10 seconds in all
        top.observe(f"n{i % 300}")
    assert calls <= 11


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        TopN(0)
    with pytest.raises(ValueError):
        TopN(3, half_life=0)
    with pytest.raises(ValueError):
        TopN(3, max_candidates=5)
    with pytest.raises(ValueError, match="other"):
        TopN(3).observe(OTHER)
