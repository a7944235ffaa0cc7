"""A tiny TCP server for the lab's server namespace (run as a script under ``ip netns exec``).

Why our own and not ``python3 -m http.server``: tests need exact control of what the server
does on the wire: answer each HTTP request on a kept-alive connection (so a client can send two
requests on one flow), or hold a connection silently (so the client's side decides every packet
the server sees). It listens on IPv4 and IPv6, prints ``ready`` once listening, and stops by
itself after ``--max-seconds`` or ``--max-connections`` so it can never run on unattended.

Ports: ``--http-port`` answers every request ``GET ...\\r\\n\\r\\n`` with a small 200 response;
``--hold-port`` accepts, reads and discards, and never sends a byte (not even a FIN).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import threading

BODY = b"resetwatch lab\n"
_MAX_REQUEST = 64 * 1024


def _response(close: bool) -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(BODY)}\r\nConnection: {'close' if close else 'keep-alive'}\r\n\r\n"
    )
    return head.encode() + BODY


def _serve_http(conn: socket.socket) -> None:
    buf = b""
    with conn:
        while True:
            try:
                chunk = conn.recv(4096)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            if len(buf) > _MAX_REQUEST:
                return
            while b"\r\n\r\n" in buf:
                head, buf = buf.split(b"\r\n\r\n", 1)
                close = b"connection: close" in head.lower()
                try:
                    conn.sendall(_response(close))
                except OSError:
                    return
                if close:
                    return


_FOREVER = threading.Event()


def _serve_hold(conn: socket.socket) -> None:
    """Read and discard; on the client's FIN keep the socket open anyway (closing would send
    our own FIN): until the process ends, the client alone decides what the server sees."""
    with conn:
        while True:
            try:
                if not conn.recv(4096):
                    break
            except OSError:
                return
        _FOREVER.wait()


def _listeners(port: int) -> list[socket.socket]:
    socks = []
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((addr, port))
        sock.listen(128)
        socks.append(sock)
    return socks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--hold-port", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--max-connections", type=int, default=1000)
    args = parser.parse_args()

    handlers = [(s, _serve_http) for s in _listeners(args.http_port)]
    if args.hold_port:
        handlers += [(s, _serve_hold) for s in _listeners(args.hold_port)]
    accepted = 0
    lock = threading.Lock()
    done = threading.Event()

    def accept_loop(sock: socket.socket, handler: object) -> None:
        nonlocal accepted
        while not done.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with lock:
                accepted += 1
                if accepted > args.max_connections:
                    conn.close()
                    done.set()
                    return
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    for sock, handler in handlers:
        threading.Thread(target=accept_loop, args=(sock, handler), daemon=True).start()
    print("ready", flush=True)
    done.wait(args.max_seconds)
    for sock, _ in handlers:
        with contextlib.suppress(OSError):
            sock.close()
    sys.stdout.flush()
    os._exit(0)  # daemon threads may sit in recv(); leave without joining them


if __name__ == "__main__":
    sys.exit(main())
