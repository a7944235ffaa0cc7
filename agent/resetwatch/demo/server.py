"""The demo's web server, run inside the server namespace (``python -m resetwatch.demo.server``).

Port 80 answers HTTP/1.1 requests on kept-alive connections; port 443 speaks a TLS look-alike
(it answers each record a client sends with an opaque record: enough for the wire to look like
TLS, no cryptography). Both families. A connection that stays silent is held open for a long
while (longer than the agent's idle timeout), so the agent, not the server, decides that it
timed out. Prints ``ready`` once listening; exits when its parent (the demo) goes away.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import socket
import sys
import threading
import time
from typing import Callable

from .wire import tls_record

HOLD_S = 120.0
"""How long a silent connection is kept (far beyond the demo agent's idle timeout)."""
_MAX_REQUEST = 64 * 1024


def _http(conn: socket.socket) -> None:
    buf = b""
    while True:
        chunk = conn.recv(4096)
        if not chunk:
            return
        buf += chunk
        if len(buf) > _MAX_REQUEST:
            return
        while b"\r\n\r\n" in buf:
            head, buf = buf.split(b"\r\n\r\n", 1)
            host = b"?"
            for line in head.split(b"\r\n")[1:]:
                if line.lower().startswith(b"host:"):
                    host = line[5:].strip()
            body = b"hello from " + host + b"\n"
            close = b"connection: close" in head.lower()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                + str(len(body)).encode()
                + (b"\r\nConnection: close" if close else b"")
                + b"\r\n\r\n"
                + body
            )
            if close:
                return


def _tls(conn: socket.socket) -> None:
    rng = random.Random()
    first = True
    while True:
        chunk = conn.recv(16384)
        if not chunk:
            return
        # A "ServerHello" first, then an application-data record per client record.
        conn.sendall(tls_record(0x16 if first else 0x17, 1200 if first else 300, rng))
        first = False


Handler = Callable[[socket.socket], None]


def _serve(conn: socket.socket, handler: Handler) -> None:
    conn.settimeout(HOLD_S)
    with conn, contextlib.suppress(OSError):
        handler(conn)


def _listen(family: int, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    sock.listen(512)
    return sock


def _accept_loop(sock: socket.socket, handler: Handler) -> None:
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        threading.Thread(target=_serve, args=(conn, handler), daemon=True).start()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http-port", type=int, default=80)
    parser.add_argument("--tls-port", type=int, default=443)
    parser.add_argument("--lab", default="", help="the lab's id (lets leftovers be found)")
    args = parser.parse_args()
    parent = os.getppid()
    for family in (socket.AF_INET, socket.AF_INET6):
        for port, handler in ((args.http_port, _http), (args.tls_port, _tls)):
            sock = _listen(family, port)
            threading.Thread(target=_accept_loop, args=(sock, handler), daemon=True).start()
    print("ready", flush=True)
    while os.getppid() == parent:
        time.sleep(1.0)
    sys.stdout.flush()
    os._exit(0)  # handler threads may sit in recv(); leave without joining them


if __name__ == "__main__":
    sys.exit(main())
