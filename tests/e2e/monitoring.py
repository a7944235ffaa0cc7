"""Real Prometheus and Alertmanager (Debian's binaries) plus a webhook receiver, all inside one
lab namespace, for the end-to-end tests.

Why inside the lab: everything then talks over that namespace's loopback (Prometheus scrapes
the agent at 127.0.0.1, sends alerts to Alertmanager at 127.0.0.1, which posts to the webhook
at 127.0.0.1), nothing listens in the host's network, and the lab's removal kills them all.
The agent's sampling rules are limited to the lab interface, so these loopback connections
are never sampled. The test process lives in the host namespace, so it reaches the HTTP APIs
with curl under ``ip netns exec`` (as `tests.lab.agent` does for /metrics).

Configs are written as JSON, which is valid YAML, so no YAML library is needed.
"""

from __future__ import annotations

import json
import math
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Optional

from resetwatch import inhibit
from tests.lab.netns import Lab, LabError
from tests.lab.traffic import SERVER_PROG

PROMETHEUS = Path("/usr/bin/prometheus")
ALERTMANAGER = Path("/usr/bin/prometheus-alertmanager")
HERE = Path(__file__).resolve().parent
WEBHOOK_PROG = HERE / "webhook.py"
LOADGEN_PROG = HERE / "loadgen.py"

START_WAIT_S = 30.0
"""Longest wait for a service to answer after its start (a limit, never asserted on)."""
MAX_SECONDS = 900.0
"""Every helper process stops by itself after this, whatever happens to the test."""


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no file)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Service:
    """A process started in the lab (the lab stops it on exit) and its log file."""

    name: str
    proc: subprocess.Popen[Any]
    log: Path

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            raise LabError(
                f"{self.name} exited with {self.proc.returncode}:\n{tail(self.log)}"
            )


def prometheus_config(
    *, target: str, alertmanager: str, rule_file: Path, interval: str = "1s"
) -> dict[str, Any]:
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "rule_files": [str(rule_file)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [
            {"job_name": "resetwatch", "static_configs": [{"targets": [target]}]}
        ],
    }


def alertmanager_config(
    webhook_url: str, group_by: Sequence[str] = ("alertname", "instance")
) -> dict[str, Any]:
    """Everything to one webhook receiver, sent one second after it arrives, with the
    shipped inhibition rules (deploy/alertmanager/resetwatch.inhibit.yml)."""
    return {
        "inhibit_rules": inhibit.inhibit_rules(),
        "route": {
            "receiver": "webhook",
            "group_by": list(group_by),
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "webhook",
                "webhook_configs": [{"url": webhook_url, "send_resolved": True}],
            }
        ],
    }


class Monitoring:
    """The services of one end-to-end run in namespace `ns` of `lab`, their files in `tmp`."""

    def __init__(
        self,
        lab: Lab,
        tmp: Path,
        *,
        ns: str = "server",
        agent_port: int,
        prometheus_port: int = 9090,
        alertmanager_port: int = 9093,
        webhook_port: int = 9099,
    ) -> None:
        self.lab = lab
        self.tmp = tmp
        self.ns = ns
        self.agent_port = agent_port
        self.prometheus_port = prometheus_port
        self.alertmanager_port = alertmanager_port
        self.webhook_port = webhook_port
        self.rule_file = tmp / "resetwatch.rules.yml"
        self.notifications_file = tmp / "webhook.jsonl"
        self.services: dict[str, Service] = {}
        self.last_alerts_body = ""

    # ----------------------------------------------------------------------------- HTTP

    def curl(self, url: str, *args: str) -> tuple[int, str]:
        """(HTTP status, body) of a request made with curl from inside the namespace; status
        0 when nothing answered."""
        proc = self.lab.run(
            self.ns,
            [
                "curl", "--silent", "--noproxy", "*", "--max-time", "5",
                "--write-out", "\n%{http_code}", *args, url,
            ],
            check=False,
            timeout=15,
        )  # fmt: skip
        body, _, code = proc.stdout.rpartition("\n")
        return (int(code) if code.strip().isdigit() else 0), body

    def prometheus_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}{path}"

    def api(self, path: str, *args: str) -> Any:
        """The ``data`` of a successful Prometheus API answer; raises `LabError` otherwise."""
        code, body = self.curl(self.prometheus_url(path), *args)
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if code != 200 or not isinstance(answer, dict) or answer.get("status") != "success":
            raise LabError(f"Prometheus {path} answered {code}: {body[:2000]!r}")
        return answer["data"]

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """An instant query: (labels, value) per series (values may be NaN)."""
        data = self.api("/api/v1/query", "--get", "--data-urlencode", f"query={expr}")
        return [(dict(r["metric"]), float(r["value"][1])) for r in data["result"]]

    def value(self, expr: str, **labels: str) -> Optional[float]:
        """The value of the one series of `expr` with these labels, None when there is none."""
        for metric, value in self.query(expr):
            if all(metric.get(k) == v for k, v in labels.items()):
                return value
        return None

    def query_text(self, expr: str) -> str:
        """An instant query's result as lines for failure messages (never raises)."""
        try:
            rows = self.query(expr)
        except LabError as error:
            return f"(query failed: {error})"
        if not rows:
            return "(no series)"
        return "; ".join(
            "{" + ", ".join(f"{k}={v}" for k, v in sorted(m.items()) if k != "__name__") + "} "
            + f"{v:g}"
            for m, v in rows
        )

    def alerts(self) -> list[dict[str, Any]]:
        """Prometheus's active alerts (pending and firing); keeps the raw answer for
        failure messages."""
        code, body = self.curl(self.prometheus_url("/api/v1/alerts"))
        self.last_alerts_body = f"HTTP {code}: {body}"
        try:
            return list(json.loads(body)["data"]["alerts"])
        except (ValueError, KeyError, TypeError):
            raise LabError(f"/api/v1/alerts answered {self.last_alerts_body[:2000]}") from None

    def alertmanager_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.alertmanager_port}{path}"

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """Send alerts to Alertmanager as Prometheus does (POST /api/v2/alerts)."""
        code, body = self.curl(
            self.alertmanager_url("/api/v2/alerts"), "--request", "POST",
            "--header", "Content-Type: application/json", "--data", json.dumps(alerts),
        )  # fmt: skip
        if code != 200:
            raise LabError(f"Alertmanager refused the alerts ({code}): {body[:2000]}")

    def alertmanager_alerts(self) -> list[dict[str, Any]]:
        """Every alert Alertmanager holds, with its status (inhibitedBy, state)."""
        code, body = self.curl(self.alertmanager_url("/api/v2/alerts"))
        if code != 200:
            raise LabError(f"Alertmanager /api/v2/alerts answered {code}: {body[:2000]}")
        return list(json.loads(body))

    def reload_prometheus(self) -> None:
        code, body = self.curl(self.prometheus_url("/-/reload"), "--request", "POST")
        if code != 200:
            raise LabError(f"Prometheus reload failed ({code}): {body}\n{self.log_tails()}")

    def rules_loaded(self) -> int:
        """How many rules Prometheus has loaded, over all groups."""
        groups = self.api("/api/v1/rules")["groups"]
        return sum(len(g["rules"]) for g in groups)

    def notifications(self) -> list[dict[str, Any]]:
        """Every webhook body Alertmanager posted so far, oldest first."""
        try:
            lines = self.notifications_file.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            if line.strip():
                entry = json.loads(line)
                out.append(dict(entry.get("body") or {"raw": entry.get("raw")}))
        return out

    # ----------------------------------------------------------------------------- starting

    def _start(self, name: str, argv: Sequence[str]) -> Service:
        log = self.tmp / f"{name}.log"
        handle: IO[str] = open(log, "w", encoding="utf-8")  # noqa: SIM115
        try:
            proc = self.lab.popen(
                self.ns,
                argv,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                text=True,
            )
        finally:
            handle.close()  # the child holds its own copy
        service = Service(name, proc, log)
        self.services[name] = service
        return service

    def _wait_answering(self, service: Service, url: str, want: Sequence[int]) -> None:
        deadline = time.monotonic() + START_WAIT_S
        code = 0
        while time.monotonic() < deadline:
            service.check_running()
            code, _ = self.curl(url)
            if code in want:
                return
            time.sleep(0.2)
        raise LabError(
            f"{service.name} did not answer {url} within {START_WAIT_S} s (last status {code}):"
            f"\n{tail(service.log)}"
        )

    def start_webhook(self) -> None:
        service = self._start(
            "webhook",
            [
                sys.executable, str(WEBHOOK_PROG), "--port", str(self.webhook_port),
                "--out", str(self.notifications_file), "--max-seconds", str(MAX_SECONDS),
            ],
        )  # fmt: skip
        # It answers POST only: a GET getting 501 proves it listens.
        self._wait_answering(service, f"http://127.0.0.1:{self.webhook_port}/", (501,))

    def start_alertmanager(self, group_by: Sequence[str] = ("alertname", "instance")) -> None:
        config = self.tmp / "alertmanager.yml"
        url = f"http://127.0.0.1:{self.webhook_port}/alerts"
        config.write_text(json.dumps(alertmanager_config(url, group_by), indent=2))
        (self.tmp / "alertmanager-data").mkdir(exist_ok=True)
        service = self._start(
            "alertmanager",
            [
                str(ALERTMANAGER),
                f"--config.file={config}",
                f"--storage.path={self.tmp / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{self.alertmanager_port}",
                "--cluster.listen-address=",
            ],
        )
        self._wait_answering(
            service, f"http://127.0.0.1:{self.alertmanager_port}/-/ready", (200,)
        )

    def start_prometheus(self, rules: str) -> None:
        """Start Prometheus with `rules` as its rule file (``groups: []`` loads none)."""
        config = self.tmp / "prometheus.yml"
        self.rule_file.write_text(rules)
        config.write_text(
            json.dumps(
                prometheus_config(
                    target=f"127.0.0.1:{self.agent_port}",
                    alertmanager=f"127.0.0.1:{self.alertmanager_port}",
                    rule_file=self.rule_file,
                ),
                indent=2,
            )
        )
        (self.tmp / "prometheus-data").mkdir(exist_ok=True)
        service = self._start(
            "prometheus",
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.tmp / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
                "--web.enable-lifecycle",
            ],
        )
        self._wait_answering(service, self.prometheus_url("/-/ready"), (200,))

    def load_rules(self, rules: str) -> int:
        """Replace the rule file and reload Prometheus; returns the number of rules loaded."""
        self.rule_file.write_text(rules)
        self.reload_prometheus()
        return self.rules_loaded()

    def start_server(self, http_port: int) -> Service:
        """The lab's TCP server (`tests.lab.serverprog`) with a connection limit high enough
        for minutes of steady load (`tests.lab.traffic.start_server` keeps its default of
        1000, which a few minutes at several connections per second would exceed)."""
        proc = self.lab.popen(
            self.ns,
            [
                sys.executable, str(SERVER_PROG), "--http-port", str(http_port),
                "--max-seconds", str(MAX_SECONDS), "--max-connections", "1000000",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], START_WAIT_S)
        line = proc.stdout.readline() if ready else ""
        if "ready" not in line:
            raise LabError(f"the lab server did not start: {line!r}")
        return Service("server", proc, self.tmp / "server.log")

    # ----------------------------------------------------------------------------- reports

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(
            f"--- {name} log (last {lines} lines) ---\n{tail(s.log, lines)}"
            for name, s in self.services.items()
        )


def finite(value: Optional[float]) -> bool:
    return value is not None and math.isfinite(value)
