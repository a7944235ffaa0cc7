"""The API's per-network views: filters and exclusions agree with the tally, top lists rank
the tampered network first, CSV parses, bad values are 400s naming the parameter, both path
families, and the official client's top-list types parse the answers."""

from __future__ import annotations

import csv
import io
import json
from typing import Any
from urllib.parse import parse_qs

import pytest

from resetwatch import api
from resetwatch.classify import Category, Tag, Verdict
from resetwatch.flows import Exclusion
from resetwatch.history import BUCKET_SECONDS, History, bucket_start
from resetwatch.networks import NetworkLabels, NetworkNames
from resetwatch.tally import ExcludedKey, JudgedKey, Tally

from .history_data import VERDICTS, epoch

NOW = epoch("2026-11-22T10:07:30")
P = 0.0001

# (asn label, country label, category, flows): AS64500 in DE is the tampered one (Post-ACK).
FLOWS = [
    ("64500", "DE", Category.POST_ACK, 150),
    ("64500", "DE", Category.NO_MATCH, 50),
    ("64501", "JP", Category.NO_MATCH, 190),
    ("64501", "JP", Category.POST_ACK, 10),
    ("64502", "FR", Category.POST_ACK, 3),  # 100% Post-ACK, but too small to trust
    ("other", "other", Category.NO_MATCH, 30),
    ("other", "DE", Category.POST_SYN, 20),
    ("", "", Category.NO_MATCH, 10),  # counted before the database was set
]


def verdict(category: Category) -> Verdict:
    stage, outcome = VERDICTS[category]
    tags = (Tag.RESET,) if category is Category.POST_ACK else ()
    return Verdict(stage, outcome, category, tags)


def networked(now: float = NOW) -> History:
    history = History()
    tally = Tally()
    for asn, country, category, n in FLOWS:
        tally.add_judged(JudgedKey("4", verdict(category), asn, country), n)
    tally.add_excluded(ExcludedKey("4", Exclusion.TRUNCATED), 7)
    history.merge({bucket_start(now - 3600): tally})
    names = history.names
    names.as_name.update({"64500": "Tamper Net", "64501": "Clean Net", "64502": "Tiny Net"})
    names.continent.update({"DE": "EU", "JP": "AS", "FR": "EU"})
    names.country_name.update({"DE": "Germany", "JP": "Japan"})  # FR's name unknown
    return history


def top_history() -> History:
    history = networked()
    names = history.names
    history.use_labels(NetworkLabels(3, lambda: NOW))
    assert history.names is names
    return history


def call(render: Any, text: str, history: History | None = None) -> tuple[int, Any]:
    history = history or networked()
    status, ctype, body = render(history.snapshot(), parse_qs(text), NOW, P)
    decoded = body.decode()
    return status, json.loads(decoded) if ctype == "application/json" else decoded


def expected(keep: Any) -> Tally:
    """The tally of the flows `keep(asn, country)` selects, straight from FLOWS."""
    out = Tally()
    for asn, country, category, n in FLOWS:
        if keep(asn, country):
            out.add_judged(JudgedKey("4", verdict(category), asn, country), n)
    return out


CONTINENT = {"DE": "EU", "JP": "AS", "FR": "EU"}
FILTERS = [
    ("asn=64500", lambda a, c: a == "64500"),
    ("asn=AS64500,64501", lambda a, c: a in ("64500", "64501")),
    ("asn=64500&asn=64502", lambda a, c: a in ("64500", "64502")),
    ("asn=-64500", lambda a, c: a not in ("", "64500")),
    ("asn=-174,64501", lambda a, c: a == "64501"),
    ("location=DE,JP", lambda a, c: c in ("DE", "JP")),
    ("location=-de", lambda a, c: c not in ("", "DE")),
    ("continent=EU", lambda a, c: CONTINENT.get(c) == "EU"),
    ("continent=-EU", lambda a, c: CONTINENT.get(c) not in (None, "EU")),
    ("asn=-64501&location=DE", lambda a, c: a not in ("", "64501") and c == "DE"),
]


@pytest.mark.parametrize("text,keep", FILTERS, ids=[f[0] for f in FILTERS])
def test_summary_filters_agree_with_the_tally(text: str, keep: Any) -> None:
    status, body = call(api.summary, "dateRange=1d&" + text)
    assert status == 200
    want = expected(keep)
    counts = body["result"]["meta"]["counts"]["summary_0"]
    assert counts["classified"] == want.classified
    assert counts["categories"] == {c.value: n for c, n in want.categories().items()}
    assert counts["excluded"] == dict.fromkeys((e.value for e in Exclusion), 0)
    assert body["result"]["meta"]["networks"]["classified"] == want.classified


@pytest.mark.parametrize("text,keep", FILTERS[:6], ids=[f[0] for f in FILTERS[:6]])
def test_tags_signatures_and_timeseries_filter_the_same(text: str, keep: Any) -> None:
    want = expected(keep)
    _, tags = call(api.tags, text)
    reset = next(r for r in tags["result"]["tags"] if r["tag"] == Tag.RESET.value)
    assert reset["count"] == want.tag_totals()[Tag.RESET]
    _, sigs = call(api.signatures, text)
    assert sigs["result"]["meta"]["counts"]["classified"] == want.classified
    assert sum(r["count"] for r in sigs["result"]["signatures"]) == want.classified
    _, series = call(api.timeseries_groups, "dateRange=1d&aggInterval=1h&" + text)
    assert sum(series["result"]["meta"]["counts"]["serie_0"]["classified"]) == want.classified


def test_without_a_filter_the_whole_server_and_no_network_meta() -> None:
    _, body = call(api.summary, "")
    meta = body["result"]["meta"]
    assert meta["counts"]["summary_0"]["classified"] == sum(f[3] for f in FLOWS)
    assert meta["counts"]["summary_0"]["excluded"]["truncated"] == 7
    assert "networks" not in meta


def test_an_untracked_network_is_an_empty_sample_with_a_note() -> None:
    _, body = call(api.summary, "asn=3356")
    meta = body["result"]["meta"]
    assert meta["counts"]["summary_0"]["classified"] == 0
    assert meta["tooSmallToTrust"] is True and meta["confidenceInfo"]["level"] == 0
    assert any("AS3356" in note and "empty sample" in note for note in meta["networks"]["notes"])
    assert meta["networks"]["filters"] == {"asn": {"include": ["3356"], "exclude": []}}


BAD = [
    ("asn=cogent", "asn"),
    ("asn=-", "asn"),
    ("asn=99999999999", "asn"),
    ("location=DEU", "location"),
    ("location=-", "location"),
    ("continent=XX", "continent"),
]


@pytest.mark.parametrize("render", [api.summary, api.timeseries_groups, api.tags,
                                    api.signatures, api.top_ases, api.top_locations])
@pytest.mark.parametrize("text,parameter", BAD, ids=[b[0] for b in BAD])
def test_bad_filter_values_are_400s_naming_the_parameter(
    render: Any, text: str, parameter: str
) -> None:
    status, body = call(render, "category=post_ack&" + text)
    assert status == 400
    message = body["errors"][0]["message"]
    assert message.startswith(parameter + ": ") and "\n" not in message


def test_both_path_families_filter() -> None:
    routes = api.routes(networked(), lambda: NOW, lambda: P)
    answers = []
    for path in ("/api/v1/tcp_resets_timeouts/summary",
                 "/client/v4/radar/tcp_resets_timeouts/summary"):
        status, _, body = routes[path]({"asn": ["64500"], "dateRange": ["1d"]})
        assert status == 200
        answers.append(json.loads(body)["result"]["summary_0"])
    assert answers[0] == answers[1] and answers[0]["post_ack"] == "75"
    for path in ("/api/v1/tcp_resets_timeouts/top/ases",
                 "/client/v4/radar/tcp_resets_timeouts/top/ases"):
        status, _, body = routes[path]({"category": ["post_ack"]})
        assert status == 200 and json.loads(body)["result"]["top_0"][0]["clientASN"] == 64500


# ---- top lists ---------------------------------------------------------------------------


def test_top_ases_rank_the_tampered_network_first() -> None:
    status, body = call(api.top_ases, "category=post_ack", top_history())
    assert status == 200
    rows = body["result"]["top_0"]
    assert [r["clientASN"] for r in rows] == [64500, 64501, 64502]
    first = rows[0]
    assert first == {"clientASN": 64500, "clientASName": "Tamper Net", "value": "75", "rank": 1,
                     "classified": 200, "tooSmallToTrust": False}
    assert rows[2]["tooSmallToTrust"] is True and rows[2]["value"] == "100"
    meta = body["result"]["meta"]
    assert meta["category"] == "post_ack" and meta["other"] == 50 and meta["tracked"] == 3


def test_top_ases_by_another_category_and_limit() -> None:
    _, body = call(api.top_ases, "category=no_match&limit=1")
    assert [r["clientASN"] for r in body["result"]["top_0"]] == [64501]
    assert body["result"]["top_0"][0]["value"] == "95"


def test_top_locations_with_names_and_a_filter() -> None:
    _, body = call(api.top_locations, "category=post_ack")
    rows = body["result"]["top_0"]
    assert [r["clientCountryAlpha2"] for r in rows] == ["DE", "JP", "FR"]
    assert rows[0]["continent"] == "EU" and rows[0]["classified"] == 220
    assert [r["clientCountryName"] for r in rows] == ["Germany", "Japan", "FR"]
    _, body = call(api.top_locations, "category=post_ack&continent=AS")
    assert [r["clientCountryAlpha2"] for r in body["result"]["top_0"]] == ["JP"]


@pytest.mark.parametrize("text,parameter", [
    ("", "category"), ("category=tampered", "category"), ("category=post_ack,post_syn",
                                                          "category"),
    ("category=post_ack&limit=0", "limit"), ("category=post_ack&limit=x", "limit"),
    ("category=post_ack&limit=101", "limit"), ("category=post_ack&dateRange=1d,7d", "dateRange"),
])
def test_top_list_refusals_name_the_parameter(text: str, parameter: str) -> None:
    for render in (api.top_ases, api.top_locations):
        status, body = call(render, text)
        assert status == 400
        assert body["errors"][0]["message"].startswith(parameter + ": ")


def test_top_csv_parses() -> None:
    status, text = call(api.top_ases, "category=post_ack&format=csv")
    assert status == 200
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0] == {"rank": "1", "clientASN": "64500", "clientASName": "Tamper Net",
                       "value": "75", "classified": "200", "tooSmallToTrust": "false"}
    assert len(rows) == 3
    _, text = call(api.top_locations, "category=post_ack&format=csv")
    assert next(csv.DictReader(io.StringIO(text)))["clientCountryAlpha2"] == "DE"


def test_official_client_types_parse_the_top_lists() -> None:
    pytest.importorskip("cloudflare")
    from cloudflare.types.radar.http import AseGetResponse, LocationGetResponse

    _, body = call(api.top_ases, "category=post_ack")
    parsed = AseGetResponse.model_validate(body["result"], strict=False)
    assert parsed.top_0[0].client_asn == 64500 and parsed.top_0[0].value == "75"
    _, body = call(api.top_locations, "category=post_ack")
    top = LocationGetResponse.model_validate(body["result"]).top_0[0]
    assert (top.client_country_alpha2, top.client_country_name) == ("DE", "Germany")


# ---- /networks (status --by) ---------------------------------------------------------------


def test_networks_rows_as_replay_gives_them() -> None:
    status, body = call(api.per_network, "by=asn")
    assert status == 200
    rows = body["result"]["by_asn"]
    assert [r["asn"] for r in rows] == [64500, 64501, "other", None, 64502]  # busiest first
    assert rows[0]["name"] == "Tamper Net" and rows[0]["shares"]["post_ack"] == "75"
    status, body = call(api.per_network, "by=country")
    assert [r["country"] for r in body["result"]["by_country"]][:2] == ["DE", "JP"]
    status, body = call(api.per_network, "by=isp")
    assert status == 400 and body["errors"][0]["message"].startswith("by: ")


def test_names_survive_a_save_and_load(tmp_path: Any) -> None:
    from resetwatch.history import HistoryFile

    history = networked()
    assert HistoryFile(str(tmp_path), lambda: NOW).save(history)
    again = History()
    HistoryFile(str(tmp_path), lambda: NOW).load(again)
    assert again.snapshot().buckets == history.snapshot().buckets
    assert again.names.as_name["64500"] == "Tamper Net"
    assert again.names.continent == {"DE": "EU", "JP": "AS", "FR": "EU"}
    assert again.names.country_name == {"DE": "Germany", "JP": "Japan"}
    names = NetworkNames()
    names.load({"asName": {"1": 2, "3": "ok"}, "continent": "junk"})  # malformed: skipped
    assert names.as_name == {"3": "ok"} and names.continent == {}
    assert BUCKET_SECONDS == 900


def test_the_history_counts_each_flow_once_under_the_metrics_labels() -> None:
    from resetwatch.event import judged_event
    from resetwatch.ipdb import Network
    from resetwatch.metrics import FlowCounts

    from .history_data import flow_at

    clock = [0.0]
    labels = NetworkLabels(1, lambda: clock[0])
    counts, history = FlowCounts(labels), History()
    history.use_labels(labels)
    big = Network(64500, "Tamper Net", "DE", "EU", "Germany")
    small = Network(64501, "Clean Net", "JP", "AS")
    for step in range(30):
        clock[0] = step * 2.0  # membership is recomputed every second
        for network in (big, big, small):
            event = judged_event(flow_at(NOW), verdict(Category.POST_ACK))
            event = event._replace(network=network)
            counts.write(event)
            history.write(event)
    total = history.snapshot().total(0, 2**40)
    assert total == counts.networks  # the same labels, each flow observed once
    assert labels.asn.observed == 90
    by_asn = total.group(lambda k: k.asn)
    assert set(by_asn) == {"64500", "other"} and by_asn["64500"] > 50
    assert history.names.as_name == {"64500": "Tamper Net"}
    assert history.names.continent == {"DE": "EU"}
    assert history.names.country_name == {"DE": "Germany"}
    assert history.snapshot().top == 1
