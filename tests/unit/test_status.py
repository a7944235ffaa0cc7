"""`resetwatch status` against a real in-process HTTP server with a real History and registry
(no HTTP mocks): the table, the JSON form, and one-line failures."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from resetwatch import api, cli, config
from resetwatch.classify import Category, Tag
from resetwatch.flows import Exclusion
from resetwatch.history import History
from resetwatch.metrics import AgentHealth, FlowCounts, build_registry
from resetwatch.nflog import NflogStats
from resetwatch.server import HttpServer
from resetwatch.status import resolve_agent, url_from_listen

from .history_data import epoch, exclude, judge

NOW = epoch("2026-11-22T10:07:30")


def serve(with_api: bool = True, packets: int = 1234) -> HttpServer:
    history = History()
    judge(history, NOW, Category.POST_ACK, 3, tags=(Tag.RESET, Tag.SINGLE_RSTACK))
    judge(history, NOW - 300, Category.NO_MATCH, 9)
    judge(history, NOW - 80000, Category.POST_SYN, 50)  # in the last day, not the last hour
    exclude(history, NOW, Exclusion.TRUNCATED, 2)
    health = AgentHealth(probability=0.001, max_flows=5000,
                         nflog=NflogStats(packets=packets, lost_seq_gap=7))
    health.rules.present = True
    health.flows_active = lambda: 17
    health.last_packet_age = lambda: 2.5
    server = HttpServer(("127.0.0.1", 0), build_registry(FlowCounts(), health),
                        lambda: (True, "ok"))  # fmt: skip
    if with_api:
        server.routes.update(api.routes(history, lambda: NOW, lambda: health.probability))
    server.start()
    return server


@pytest.fixture
def agent() -> Iterator[str]:
    server = serve()
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


def status(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["status", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_table(agent: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = status(capsys, "--agent", agent)
    assert (code, err) == (0, "")
    assert agent in out.splitlines()[0]
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert lines["post_ack"][1:] == ["25.00%", "3"]
    assert lines["no_match"][1:] == ["75.00%", "9"]
    assert lines["post_syn"][1:] == ["0.00%", "0"]
    assert lines["reset"][1:] == ["3", "25.00%"]  # a tag: count, share of classified
    assert "classified flows:      12" in out
    assert "excluded flows:        2 (truncated 2)" in out
    assert "0.001 (1 in 1,000)" in out
    assert "rules:                 present" in out
    assert "7 packets (seq_gap 7)" in out and "of 1,234 received" in out
    assert "flows held:            17 of 5,000" in out
    assert "last packet:           2 s ago" in out or "last packet:           3 s ago" in out


def test_no_packet_yet_is_not_an_age(capsys: pytest.CaptureFixture[str]) -> None:
    """An agent that never received a packet exports the age since its start: not shown."""
    server = serve(packets=0)
    try:
        url = f"http://127.0.0.1:{server.port}"
        code, out, _ = status(capsys, "--agent", url)
        json_code, json_out, _ = status(capsys, "--agent", url, "--format", "json")
    finally:
        server.stop()
    assert code == 0 and "last packet:           no packet yet" in out, out
    assert " s ago" not in out
    assert json_code == 0 and json.loads(json_out)["health"]["lastPacketAgeSeconds"] is None


def test_json(agent: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = status(capsys, "--agent", agent.replace("http://", ""), "--range", "1d",
                          "--format", "json")  # fmt: skip
    assert code == 0
    doc = json.loads(out)
    assert doc["range"] == "1d"
    counts = doc["summary"]["meta"]["counts"]["summary_0"]
    assert counts["classified"] == 62
    assert doc["health"]["flowsHeld"] == 17
    assert doc["health"]["nflogLost"] == {"seq_gap": 7.0, "bad_message": 0.0}
    assert {t["tag"] for t in doc["tags"]["tags"]} == {t.value for t in Tag}


def test_a_bad_range_is_one_line_exit_2(agent: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = status(capsys, "--agent", agent, "--range", "9x")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("resetwatch status: --range: '9x'"), err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_no_agent_is_one_line_naming_the_address(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    code, out, err = status(capsys, "--agent", url)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and f"no agent answering at {url}" in err, err
    assert "Traceback" not in err


def test_a_server_without_the_api_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(with_api=False)
    try:
        code, _, err = status(capsys, "--agent", f"http://127.0.0.1:{server.port}")
    finally:
        server.stop()
    assert code == 1 and err.count("\n") == 1 and "HTTP 404" in err, err


def test_the_address_comes_from_the_config_file(
    agent: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "resetwatch.toml"
    conf.write_text(f'listen = "{agent.replace("http://", "")}"\n')
    code, out, _ = status(capsys, "--config", str(conf))
    assert code == 0 and "classified flows:      12" in out
    conf.write_text("listen = 7\n")
    code, _, err = status(capsys, "--config", str(conf))
    assert code == 2 and err.count("\n") == 1 and "listen = 7" in err


@pytest.mark.parametrize(
    "listen,url",
    [
        ("127.0.0.1:9824", "http://127.0.0.1:9824"),
        ("0.0.0.0:9824", "http://127.0.0.1:9824"),
        ("[::]:9824", "http://[::1]:9824"),
        ("[2001:db8::1]:80", "http://[2001:db8::1]:80"),
    ],
)
def test_url_from_listen(listen: str, url: str) -> None:
    assert url_from_listen(listen) == url


def test_resolving_the_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_agent("localhost:1/", None) == "http://localhost:1"
    assert resolve_agent("http://[::1]:2", "/nonexistent") == "http://[::1]:2"  # --agent wins
    monkeypatch.setattr(config, "DEFAULT_CONFIG", tmp_path / "absent.toml")
    assert resolve_agent(None, None) == "http://127.0.0.1:9824"
    present = tmp_path / "present.toml"
    present.write_text('listen = "127.0.0.1:7777"\n')
    monkeypatch.setattr(config, "DEFAULT_CONFIG", present)
    assert resolve_agent(None, None) == "http://127.0.0.1:7777"


def test_an_answer_of_another_shape_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(with_api=False)
    odd = (200, "application/json", b'{"success": true, "errors": [], "result": {"x": 1}}')
    for path in (api.SUMMARY, api.TAGS):
        server.routes[path] = lambda _query: odd
    try:
        code, out, err = status(capsys, "--agent", f"http://127.0.0.1:{server.port}")
    finally:
        server.stop()
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and "cannot read" in err and "Traceback" not in err, err


@pytest.fixture
def networked_agent() -> Iterator[str]:
    from resetwatch.networks import NetworkLabels

    from .test_api_networks import NOW as NETWORKS_NOW
    from .test_api_networks import networked

    history = networked()
    history.use_labels(NetworkLabels(50, lambda: 0.0))
    health = AgentHealth(probability=0.0001, max_flows=5000)
    server = HttpServer(("127.0.0.1", 0), build_registry(FlowCounts(), health),
                        lambda: (True, "ok"))  # fmt: skip
    server.routes.update(api.routes(history, lambda: NETWORKS_NOW, lambda: 0.0001))
    server.start()
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


def test_by_asn_is_replays_table_from_the_agent(
    networked_agent: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from resetwatch.report import network_table
    from resetwatch.tally import Tally

    from .test_api_networks import networked

    code, out, err = status(capsys, "--agent", networked_agent, "--range", "1d", "--by", "asn")
    assert (code, err) == (0, "")
    snapshot = networked().snapshot()
    want = network_table(Tally.sum(snapshot.buckets.values()), "asn", snapshot.names.as_name)
    assert want in out  # the very table replay --by prints
    line = next(x for x in out.splitlines() if x.strip().startswith("AS64500"))
    assert "75.00" in line or "75" in line
    assert "Tamper Net" in line
    assert any(x.strip().startswith("other") for x in out.splitlines())
    assert "the 50 busiest networks" in out
    code, out, _ = status(capsys, "--agent", networked_agent, "--range", "1d", "--by",
                          "country", "--format", "json")
    assert code == 0
    rows = json.loads(out)["networks"]["by_country"]
    assert rows[0]["country"] == "DE" and rows[0]["classified"] == 220


def test_by_without_a_database_says_so(agent: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = status(capsys, "--agent", agent, "--by", "asn")
    assert code == 0 and "no IP database" in out


def test_by_takes_asn_or_country(agent: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["status", "--agent", agent, "--by", "isp"])
    assert caught.value.code == 2
