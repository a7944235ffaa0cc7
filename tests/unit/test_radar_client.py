"""The official Radar client (Cloudflare's Python SDK, strict) reads the local API unchanged.

The agent's own HTTP listener serves a history; the SDK, pointed at `/client/v4` with
`_strict_response_validation=True` and no retries, parses every answer into its declared
response types, and raises its own error classes for our 400 and 404.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from resetwatch import api
from resetwatch.classify import Category, Tag
from resetwatch.flows import Exclusion
from resetwatch.history import History
from resetwatch.metrics import AgentHealth, FlowCounts, build_registry
from resetwatch.server import HttpServer

from .history_data import exclude, judge

cloudflare = pytest.importorskip("cloudflare", reason="the [test] extra installs cloudflare")
from cloudflare.types.radar import (  # noqa: E402
    TCPResetsTimeoutSummaryResponse,
    TCPResetsTimeoutTimeseriesGroupsResponse,
)


@pytest.fixture(scope="module")
def agent() -> Iterator[tuple[str, History, float]]:
    import time

    now = time.time()
    history = History()
    judge(history, now, Category.POST_ACK, 30, tags=(Tag.RESET, Tag.SINGLE_RST))
    judge(history, now - 3600, Category.NO_MATCH, 120)
    judge(history, now - 3 * 86400, Category.POST_PSH, 7, tags=(Tag.TIMEOUT,))
    judge(history, now - 8 * 86400, Category.POST_SYN, 5, tags=(Tag.TIMEOUT,))
    judge(history, now - 20 * 86400, Category.LATER_IN_FLOW, 2, tags=(Tag.RESET,))
    exclude(history, now - 60, Exclusion.TRUNCATED, 4)
    server = HttpServer(
        ("127.0.0.1", 0), build_registry(FlowCounts(), AgentHealth()), lambda: (True, "ok")
    )
    server.routes.update(api.routes(history, time.time, lambda: 0.0001))
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}/client/v4", history, now
    finally:
        server.stop()


def client(base_url: str) -> Any:
    return cloudflare.Cloudflare(
        api_token="unused", base_url=base_url, max_retries=0, _strict_response_validation=True
    )


@pytest.mark.parametrize("ranges", [["1d"], ["7d"], ["28d"], ["1d", "1dControl"],
                                    ["7d", "7dControl"], ["4w"]])  # fmt: skip
def test_summary_parses_strictly(agent: Any, ranges: list[str]) -> None:
    base, _, _ = agent
    result = client(base).radar.tcp_resets_timeouts.summary(date_range=ranges)
    assert isinstance(result, TCPResetsTimeoutSummaryResponse)
    assert len(result.meta.date_range) == len(ranges)
    assert result.meta.units and result.meta.confidence_info.annotations == []
    total = sum(float(getattr(result.summary_0, c.value)) for c in Category)
    assert total == pytest.approx(100)


def test_the_confidence_level_follows_the_sample_size(agent: Any) -> None:
    base, _, _ = agent
    radar = client(base).radar.tcp_resets_timeouts
    day = radar.summary(date_range=["1d"])  # 150 classified: trusted
    assert day.meta.confidence_info.level == 3
    assert float(day.summary_0.post_ack) == pytest.approx(20.0)
    control = radar.summary(date_range=["1dControl"])  # nothing a week ago
    assert control.meta.confidence_info.level == 0


@pytest.mark.parametrize("ranges,agg", [(["1d"], "1h"), (["7d"], "1d"), (["28d"], "1w"),
                                        (["1d", "1dControl"], "15m")])  # fmt: skip
def test_timeseries_groups_parse_strictly(agent: Any, ranges: list[str], agg: str) -> None:
    base, _, _ = agent
    result = client(base).radar.tcp_resets_timeouts.timeseries_groups(
        date_range=ranges, agg_interval=agg  # type: ignore[arg-type]
    )
    assert isinstance(result, TCPResetsTimeoutTimeseriesGroupsResponse)
    serie = result.serie_0
    assert len(serie.timestamps) == len(serie.post_syn) == len(serie.no_match) > 0


def test_name_labels_the_comparison_series(agent: Any) -> None:
    base, _, _ = agent
    raw = client(base).radar.tcp_resets_timeouts.with_raw_response.timeseries_groups(
        date_range=["1d", "1dControl"], name=["serie_0", "last_week"]
    )
    body = json.loads(raw.http_response.text)
    assert set(body["result"]) == {"meta", "serie_0", "last_week"}
    assert isinstance(raw.parse(), TCPResetsTimeoutTimeseriesGroupsResponse)


def test_csv_through_the_raw_response(agent: Any) -> None:
    base, _, _ = agent
    raw = client(base).radar.tcp_resets_timeouts.with_raw_response.summary(
        date_range=["1d"], format="CSV"
    )
    lines = raw.http_response.text.splitlines()
    assert lines[0].startswith("serie,startTime,endTime,post_syn")
    assert lines[1].startswith("summary_0,")


def test_a_bad_parameter_is_the_clients_bad_request(agent: Any) -> None:
    base, _, _ = agent
    with pytest.raises(cloudflare.BadRequestError) as caught:
        client(base).radar.tcp_resets_timeouts.summary(date_range=["29d"])
    assert "dateRange" in str(caught.value)


def test_an_unknown_endpoint_is_the_clients_not_found(agent: Any) -> None:
    base, _, _ = agent
    with pytest.raises(cloudflare.NotFoundError):
        client(base).radar.ranking.top()


def test_replay_json_parses_as_the_clients_summary(tmp_path: Any) -> None:
    from pathlib import Path

    from resetwatch.cli import main

    capture = Path(__file__).resolve().parents[1] / "fixtures" / "lab_mixed_v4v6.pcap"
    out = tmp_path / "out.json"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["replay", str(capture), "--idle-timeout", "5", "--close-linger", "1",
                     "--format", "json"]) == 0
    out.write_text(buffer.getvalue())
    body = json.loads(out.read_text())
    parsed = TCPResetsTimeoutSummaryResponse.model_validate(body["result"], strict=False)
    assert parsed.meta.date_range[0].start_time <= parsed.meta.date_range[0].end_time
    assert parsed.meta.last_updated == parsed.meta.date_range[0].end_time


@pytest.fixture(scope="module")
def networked_agent() -> Iterator[str]:
    import time

    from .test_api_networks import networked

    server = HttpServer(
        ("127.0.0.1", 0), build_registry(FlowCounts(), AgentHealth()), lambda: (True, "ok")
    )
    server.routes.update(api.routes(networked(time.time()), time.time, lambda: 0.0001))
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}/client/v4"
    finally:
        server.stop()


@pytest.mark.parametrize("filters,post_ack,classified", [
    ({"asn": ["64500"]}, 75.0, 200),
    ({"asn": ["-64500", "-64502"]}, 4.0, 250),
    ({"location": ["DE", "JP"]}, 38.10, 420),
    ({"continent": ["EU"]}, 68.61, 223),
    ({"asn": ["3356"]}, 0.0, 0),
])  # fmt: skip
def test_filtered_answers_parse_strictly(
    networked_agent: str, filters: dict[str, list[str]], post_ack: float, classified: int
) -> None:
    radar = client(networked_agent).radar.tcp_resets_timeouts
    result = radar.summary(date_range=["1d"], **filters)
    assert isinstance(result, TCPResetsTimeoutSummaryResponse)
    assert float(result.summary_0.post_ack) == pytest.approx(post_ack, abs=0.01)
    raw = radar.with_raw_response.timeseries_groups(date_range=["1d"], agg_interval="1h",
                                                    **filters)
    assert isinstance(raw.parse(), TCPResetsTimeoutTimeseriesGroupsResponse)
    counts = json.loads(raw.http_response.text)["result"]["meta"]["counts"]["serie_0"]
    assert sum(counts["classified"]) == classified


def test_a_bad_filter_is_the_clients_bad_request(networked_agent: str) -> None:
    with pytest.raises(cloudflare.BadRequestError) as caught:
        client(networked_agent).radar.tcp_resets_timeouts.summary(location=["Germany"])
    assert "location" in str(caught.value)
