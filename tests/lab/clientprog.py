"""Client actions for the lab's client namespace (run as a script under ``ip netns exec``).

Why a script and not in-process sockets: a socket belongs to the network namespace of the
process that creates it, and the test process stays in the host namespace. Every action binds a
chosen source port, so the test can find its flow in the capture by that port, and every action
is bounded in time (socket timeouts) and in packets (one connection).

Actions (the first argument):

``session``  connect, send ``--requests`` HTTP requests, then end with ``--end``:
    ``abort`` (close with SO_LINGER 0: the kernel sends a RST), ``close`` (a normal FIN close),
    ``hang`` (drop every further packet of this source port in this namespace's OUTPUT chain,
    then abort silently: the server sees the connection go quiet, as when a path breaks),
    ``fin_abort`` (send a FIN with shutdown, then abort: a FIN and a RST on one flow).
``forge``    open a connection, then send forged RSTs on its 4-tuple with scapy (JSON spec on
    stdin), then silence the real socket as ``hang`` does. Prints JSON of what was sent.
``aborts``   ``--count`` connections from consecutive source ports, each aborted after 0-2
    requests (the ordinary aborting clients of the `ipid_jump` false-positive test).
``syn``      send one bare SYN with scapy (no socket, so the kernel answers the server's
    SYN-ACK with a RST).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Optional

TIMEOUT_S = 5.0


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _connect(dst: str, port: int, sport: int) -> socket.socket:
    fam = _family(dst)
    sock = socket.socket(fam, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.settimeout(TIMEOUT_S)
    sock.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", sport))
    sock.connect((dst, port))
    return sock


def _request(dst: str, n: int) -> bytes:
    host = f"[{dst}]" if ":" in dst else dst
    return f"GET /{n} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: rwlab\r\n\r\n".encode()


def _read_reply(sock: socket.socket) -> int:
    """Read one HTTP response (headers plus Content-Length body); returns its length."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            return len(buf)
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return len(head) + 4 + len(body)


def _abort(sock: socket.socket) -> None:
    """Close with SO_LINGER on and a zero timeout: the kernel discards the connection and sends
    a RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


SIOCOUTQ = 0x5411
"""ioctl: bytes the peer has not yet acknowledged (``write_seq - snd_una``, a FIN included)."""


def _wait_acked(sock: socket.socket) -> None:
    """Wait until the peer has acknowledged everything sent (a FIN included), so that no ACK
    of ours is still in flight toward a socket we are about to abort: an ACK arriving after the
    abort would make our kernel answer with a second, bare RST and change the flow's wire."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        pending = struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0" * 4))[0]
        if pending == 0:
            return
        time.sleep(0.002)
    raise TimeoutError("the server did not acknowledge what was sent")


def _silence(sock: socket.socket, sport: int) -> None:
    """Make the server see silence from now on: drop this source port's packets on the way out,
    then abort (its RST is dropped too). The rule stays until the namespace is deleted, so the
    kernel's answers to later server retransmissions are dropped as well."""
    tool = "ip6tables" if sock.family == socket.AF_INET6 else "iptables"
    subprocess.run(
        [tool, "-w", "-A", "OUTPUT", "-p", "tcp", "--sport", str(sport), "-j", "DROP"],
        check=True,
        timeout=TIMEOUT_S,
    )
    _abort(sock)


def _fastopen(dst: str, port: int, sport: int, data: bytes) -> socket.socket:
    """Open a connection with `data` in its SYN (TCP Fast Open: `sendto` with MSG_FASTOPEN on
    an unconnected socket). The namespace's ``net.ipv4.tcp_fastopen`` must allow it without a
    cookie (flag 4), or the kernel sends only a cookie request in the SYN."""
    fam = _family(dst)
    sock = socket.socket(fam, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.settimeout(TIMEOUT_S)
    sock.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", sport))
    sock.sendto(data, socket.MSG_FASTOPEN, (dst, port))
    return sock


def session(args: argparse.Namespace) -> dict[str, Any]:
    received = 0
    first = 0
    if args.fastopen:
        sock = _fastopen(args.dst, args.port, args.sport, _request(args.dst, 0))
        first = 1
        if args.wait_replies:
            received += _read_reply(sock)
    else:
        sock = _connect(args.dst, args.port, args.sport)
    for n in range(first, args.requests):
        sock.sendall(_request(args.dst, n))
        if args.wait_replies:
            received += _read_reply(sock)
    if args.wait_acked:
        _wait_acked(sock)
    if args.settle:
        time.sleep(args.settle)
    if args.end == "abort":
        _abort(sock)
    elif args.end == "fin_abort":
        sock.shutdown(socket.SHUT_WR)  # our FIN goes out
        _wait_acked(sock)
        _abort(sock)
    elif args.end == "close":
        sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            while sock.recv(4096):
                pass
        sock.close()
    else:
        _silence(sock, args.sport)
    return {"sport": args.sport, "received": received}


def aborts(args: argparse.Namespace) -> dict[str, Any]:
    """`--count` connections from consecutive source ports from `--sport`, each sending 0, 1
    or 2 requests (in turn, reading the replies), then aborting (SO_LINGER 0): ordinary
    aborting clients, one process for all."""
    for n in range(args.count):
        sock = _connect(args.dst, args.port, args.sport + n)
        for k in range(n % 3):
            sock.sendall(_request(args.dst, k))
            _read_reply(sock)
        _abort(sock)
    return {"sport": args.sport, "count": args.count}


def _scapy() -> Any:
    """Import scapy late: it takes about a second, and only the forging actions need it."""
    import scapy.all as scapy

    scapy.conf.verb = 0
    return scapy


def _send(pkt: Any) -> None:
    """Send a scapy-built IP packet through the kernel's raw socket (IPPROTO_RAW: the header
    is ours), so routing and neighbour resolution are the namespace's own and a failure
    raises. Why not ``scapy.send``: in scapy 2.8 it sent an IPv6 packet through its IPv4
    socket and only logged the error ("Address family for hostname not supported")."""
    family = socket.AF_INET6 if ":" in pkt.dst else socket.AF_INET
    with socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        raw.sendto(bytes(pkt), (pkt.dst, 0))


def _ip_layer(scapy: Any, src: str, dst: str, ttl: Optional[int]) -> Any:
    if ":" in dst:
        return (
            scapy.IPv6(src=src, dst=dst) if ttl is None else scapy.IPv6(src=src, dst=dst, hlim=ttl)
        )
    return scapy.IP(src=src, dst=dst) if ttl is None else scapy.IP(src=src, dst=dst, ttl=ttl)


def forge(args: argparse.Namespace) -> list[dict[str, Any]]:
    """For each connection in the spec: sniff its handshake (to learn both initial sequence
    numbers), connect, optionally send one request and read the reply, then send the RSTs.

    A forged RST carries the client's next sequence number exactly: the server's conntrack
    rejects a RST below the highest sequence it has acknowledged as invalid, and an invalid
    packet has no conntrack entry, so the sampling rule (a conntrack label match) would never
    log it. The ack field is free on a RST without ACK (conntrack ignores it); ``ack: null``
    means the correct one (the server's next sequence number), as a RST+ACK needs."""
    scapy = _scapy()
    spec = json.load(sys.stdin)
    sent: list[dict[str, Any]] = []
    for conn in spec:
        dst, port, sport, src = conn["dst"], conn["port"], conn["sport"], conn["src"]
        listening = threading.Event()
        sniffer = scapy.AsyncSniffer(
            iface=args.iface,
            filter=f"tcp port {sport}",
            lfilter=lambda p: scapy.TCP in p and bool(p[scapy.TCP].flags & 0x02),
            count=2,
            started_callback=listening.set,
        )
        sniffer.start()
        # AsyncSniffer opens its socket in a thread: connecting earlier would miss the SYN.
        if not listening.wait(TIMEOUT_S):
            raise RuntimeError("scapy's sniffer did not start")
        sock = _connect(dst, port, sport)
        received = 0
        request = b""
        if conn.get("request"):
            request = _request(dst, 0)
            sock.sendall(request)
            received = _read_reply(sock)
            time.sleep(0.2)  # let the kernel's (delayed) ACK of the reply go out first
        sniffer.join(timeout=TIMEOUT_S)
        syns = sniffer.results or []
        client_syn = next(p for p in syns if p[scapy.TCP].sport == sport)
        client_isn = int(client_syn[scapy.TCP].seq)
        client_id = int(client_syn[scapy.IP].id) if scapy.IP in client_syn else 0
        server_isn = next(int(p[scapy.TCP].seq) for p in syns if p[scapy.TCP].dport == sport)
        seq = (client_isn + 1 + len(request)) & 0xFFFFFFFF
        right_ack = (server_isn + 1 + received) & 0xFFFFFFFF
        rsts = []
        for n, rst in enumerate(conn["rsts"]):
            ack = right_ack if rst.get("ack") is None else int(rst["ack"])
            flags = rst.get("flags", "R")
            ip = _ip_layer(scapy, src, dst, rst.get("ttl"))
            if scapy.IP in ip:
                # The client's kernel counts one ID per packet: the SYN, the ACK, maybe a
                # request and an ACK, then these. An injector writes its own, far from it.
                if rst.get("ip_id") == "random":
                    ip.id = (client_id + random.randrange(8192, 57345)) & 0xFFFF or 1
                else:
                    ip.id = (client_id + 4 + n) & 0xFFFF
            pkt = ip / scapy.TCP(sport=sport, dport=port, flags=flags, seq=seq, ack=ack, window=0)
            _send(pkt)
            rsts.append(
                {"flags": flags, "seq": seq, "ack": ack, "ttl": rst.get("ttl"),
                 "ip_id": int(pkt[scapy.IP].id) if scapy.IP in pkt else None}
            )  # fmt: skip
            time.sleep(conn.get("gap", 0.05))
        _silence(sock, sport)
        sent.append(
            {"sport": sport, "client_isn": client_isn, "server_isn": server_isn, "rsts": rsts}
        )
    return sent


def syn(args: argparse.Namespace) -> dict[str, Any]:
    scapy = _scapy()
    if args.zmap_modern:
        # ZMap 4.1+'s SYN: TTL 255 (--probe-ttl), IP ID not 54321, no DF, window 65535, and
        # one of its option templates, here "linux": MSS 1460, SACK permitted, timestamps
        # (TSval the Unix time in seconds, as ZMap stamps its template at scan start; TSecr
        # 0), NOP, window scale 7. Bytes as ZMap writes them: 02 04 05 b4 04 02 08 0a
        # TSval TSecr 01 03 03 07.
        ip = scapy.IP(src=args.src, dst=args.dst, ttl=255, id=4242, flags=0)
        options = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (int(time.time()), 0)),
                   ("NOP", None), ("WScale", 7)]  # fmt: skip
        tcp = scapy.TCP(sport=args.sport, dport=args.port, flags="S", seq=args.seq,
                        window=65535, options=options)  # fmt: skip
        pkt = ip / tcp
    else:
        pkt = _ip_layer(scapy, args.src, args.dst, args.ttl) / scapy.TCP(
            sport=args.sport, dport=args.port, flags="S", seq=args.seq, window=64240
        )
    _send(pkt)
    time.sleep(0.2)  # the server's SYN-ACK and the kernel's RST answer take a moment
    return {"sport": args.sport, "seq": args.seq}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("session")
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sport", type=int, required=True)
    p.add_argument("--requests", type=int, default=0)
    p.add_argument("--wait-replies", action="store_true")
    p.add_argument("--wait-acked", action="store_true")
    p.add_argument("--settle", type=float, default=0.0)
    p.add_argument("--fastopen", action="store_true", help="the first request in the SYN")
    p.add_argument("--end", choices=("abort", "fin_abort", "close", "hang"), required=True)
    p = sub.add_parser("aborts")
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sport", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p = sub.add_parser("forge")
    p.add_argument("--iface", required=True)
    p = sub.add_parser("syn")
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sport", type=int, required=True)
    p.add_argument("--seq", type=int, default=1000)
    p.add_argument("--ttl", type=int)
    p.add_argument("--zmap-modern", action="store_true", help="shaped like ZMap 4.1+ (IPv4)")
    args = parser.parse_args()
    actions = {"session": session, "aborts": aborts, "forge": forge, "syn": syn}
    result = actions[args.action](args)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
