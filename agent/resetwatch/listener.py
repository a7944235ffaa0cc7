"""The agent's HTTP side, wired once: /metrics, /healthz and the local API (api.py) behind
its cache and size limits (apicache.py), on the listener of server.py."""

from __future__ import annotations

import json
from typing import Callable

from prometheus_client.registry import CollectorRegistry

from . import api, apicache
from .config import SETTINGS, Config
from .history import History
from .metrics import AgentHealth
from .server import HttpServer, Response, Route

CONFIG = api.PREFIX + "/config"
"""The running agent's settings (`resetwatch rules check` compares the rules with them)."""


def config_route(current: Callable[[], Config]) -> Route:
    def handle(_query: dict[str, list[str]]) -> Response:
        config = current()
        settings = {s.key: getattr(config, s.key) for s in SETTINGS}
        body = {"source": config.source, "settings": settings}
        return 200, "application/json", (json.dumps(body, indent=2) + "\n").encode()

    return handle


def open_listener(
    config: Config,
    registry: CollectorRegistry,
    healthy: Callable[[], tuple[bool, str]],
    history: History,
    wall: Callable[[], float],
    health: AgentHealth,
    current: Callable[[], Config],
) -> HttpServer:
    """Bind the listener (OSError when the address is taken) and add the API's routes;
    `current` gives the running settings (they change on reload)."""
    http = HttpServer(config.listen_address, registry, healthy,
                      max_connections=config.http_max_connections)  # fmt: skip
    health.http_refused = http.refused
    health.http_open = lambda: http.open_connections
    routes = api.routes(history, wall, lambda: health.probability)
    settle = config.idle_timeout + config.close_linger  # how long a closed bucket still grows
    http.routes.update(
        apicache.guard(routes, wall, settle=settle, retention=lambda: history.retention)
    )
    http.routes[CONFIG] = config_route(current)
    return http


def started_line(config: Config, port: int) -> str:
    """The one start line: what is sampled and where to look (the real port for port 0)."""
    address = f"{config.listen.rpartition(':')[0]}:{port}"
    state = config.state_dir or "memory only (state_dir is empty)"
    return (
        f"started: sampling {config.probability:g} of new TCP connections, NFLOG group "
        f"{config.nflog_group}, metrics on http://{address}/metrics, API on "
        f"http://{address}{api.PREFIX}, state in {state}"
    )
