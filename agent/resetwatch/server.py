"""The agent's HTTP listener: /metrics, /healthz, and whatever routes the daemon adds."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

Response = tuple[int, str, bytes]
"""(status, content type, body)"""
Route = Callable[[dict[str, list[str]]], Response]


class HttpServer:
    """A threaded HTTP server on its own thread; routes map a path to a handler of the query."""

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        healthy: Callable[[], tuple[bool, str]],
    ) -> None:
        self.routes: dict[str, Route] = {
            "/metrics": lambda _q: (200, CONTENT_TYPE_LATEST, generate_latest(registry)),
            "/healthz": self._healthz,
        }
        self._healthy = healthy
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            server_version = "resetwatch"

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                route = routes.get(url.path)
                if route is None:
                    status, ctype, body = 404, "text/plain; charset=utf-8", b"not found\n"
                else:
                    try:
                        status, ctype, body = route(parse_qs(url.query))
                    except Exception as error:  # a bad handler must not kill the listener
                        status, ctype = 500, "text/plain; charset=utf-8"
                        body = f"internal error: {error}\n".encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes every 15 s would flood the journal

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET

        self.httpd = Server(address, Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def _healthz(self, _query: dict[str, list[str]]) -> Response:
        ok, text = self._healthy()
        return (200 if ok else 503), "text/plain; charset=utf-8", (text + "\n").encode()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
