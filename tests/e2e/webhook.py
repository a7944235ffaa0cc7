"""A webhook receiver for Alertmanager (run as a script under ``ip netns exec``).

Listens on ``127.0.0.1:--port`` of its namespace and appends every POST it gets to `--out`, one
JSON object per line: ``{"path": ..., "body": <the JSON body Alertmanager sent>}`` (a body
that is not JSON is kept as text under ``"raw"``). Prints ``ready`` once listening and exits by
itself after `--max-seconds`, so it can never run on unattended.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional

_LOCK = threading.Lock()


def _handler(out: Path) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            entry: dict[str, Any] = {"path": self.path}
            try:
                entry["body"] = json.loads(raw)
            except ValueError:
                entry["raw"] = raw.decode("utf-8", "replace")
            with _LOCK, out.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), _handler(args.out))
    server.daemon_threads = True
    timer = threading.Timer(args.max_seconds, lambda: os._exit(0))
    timer.daemon = True
    timer.start()
    print("ready", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
