"""The conntrack-free sampler for the nft backend: a keyed hash of the 4-tuple and a set.

The published rules mark a sampled connection with a conntrack label and count its packets
with conntrack, which makes the kernel track every connection of the namespace. This sampler
keeps state only for the sampled connections:

- A SYN (SYN set; FIN, RST and ACK clear) is sampled when `jhash` of its 4-tuple, keyed with a
  secret seed drawn at install, falls below K in N. The same 4-tuple always gets the same
  decision (a retransmitted SYN too), and nobody who does not know the seed can choose
  source ports that are, or are not, sampled. The first rule accepts the SYNs the hash does
  not choose (ending this chain only), so each SYN is hashed once.
- A sampled SYN deletes the 4-tuple from the set and adds it again, with a `limit` of
  `max_packets` packets that belongs to that element: so every SYN starts a fresh window
  (port reuse gives a new flow, as a new conntrack entry does; a retransmitted SYN restarts
  the window too, and the agent stops at its own 10th packet). The rule logs the SYN and
  accepts, which ends this chain only (policy accept: other tables still see the packet).
- Every other packet of the client direction is logged when its 4-tuple is in the set. The
  lookup itself spends one token of the element's limit and fails once they are gone, so the
  SYN and the next `max_packets - 1` packets are logged (the add spent the SYN's token). The
  key's order (client first) leaves the server's replies out, as `ct direction original` does.
- The set is bounded (`size`); its elements expire `WINDOW_S` after their SYN. When the add
  fails (set full) the sample rule stops before its `accept`, and the next rule, which only
  chosen SYNs reach, counts the SYN: a full set is counted, never silent.

No `ct` expression anywhere: the namespace's conntrack stays off unless something else uses it.
"""

from __future__ import annotations

import secrets
from typing import Any

from .spec import LOG_PREFIX, RuleSpec

SET_SIZE = 65536
"""Elements each family's set holds at most: sampled connections of the last `WINDOW_S`."""

WINDOW_S = 600
"""Seconds a sampled 4-tuple stays in the set after its SYN: its first packets must come
within it (the agent's own idle timeout is 300 s by default)."""

LIMIT_RATE = (1, "week")
"""The element limit refills one packet a week: in practice only its burst (the first
`max_packets` packets) ever passes."""

ID_PASS = "resetwatch:not-sampled"
"""Comment of the rule that lets the SYNs the hash does not choose go, hashed once."""

ID_FULL = "resetwatch:set-full"
"""Comment of the rule that counts sampled SYNs the full set could not take."""

SET_NAMES = {4: "sampled4", 6: "sampled6"}
_ADDR = {4: ("ip", "ipv4_addr"), 6: ("ip6", "ipv6_addr")}

Json = Any


def new_seed() -> int:
    """A random, non-zero 32-bit hash key: what makes the decision unpredictable from outside."""
    return 1 + secrets.randbelow(2**32 - 1)


def key_text(family: int) -> str:
    """The 4-tuple in client-to-server order, as nft writes a concatenation."""
    proto = _ADDR[family][0]
    return f"{proto} saddr . tcp sport . {proto} daddr . tcp dport"


def key_json(family: int) -> Json:
    proto = _ADDR[family][0]
    fields = [(proto, "saddr"), ("tcp", "sport"), (proto, "daddr"), ("tcp", "dport")]
    return {"concat": [{"payload": {"protocol": p, "field": f}} for p, f in fields]}


def limit_text(spec: RuleSpec) -> str:
    rate, per = LIMIT_RATE
    return f"limit rate {rate}/{per} burst {spec.max_packets} packets"


def limit_json(spec: RuleSpec) -> Json:
    rate, per = LIMIT_RATE
    return {"limit": {"rate": rate, "burst": spec.max_packets, "per": per}}


def set_text(spec: RuleSpec, size: int) -> str:
    """The set declarations, one per sampled family."""
    out = ""
    for family in spec.families:
        types = f"{_ADDR[family][1]} . inet_service . {_ADDR[family][1]} . inet_service"
        out += (
            f"\tset {SET_NAMES[family]} {{\n"
            f"\t\ttype {types}\n"
            f"\t\tsize {size}\n"
            f"\t\tflags dynamic,timeout\n"
            f"\t\ttimeout {WINDOW_S}s\n"
            f"\t}}\n"
        )
    return out


def set_json(spec: RuleSpec, size: int) -> dict[str, Json]:
    """The fields of each set that `check` compares, as `nft -j` lists them."""
    return {
        SET_NAMES[family]: {
            "type": [_ADDR[family][1], "inet_service", _ADDR[family][1], "inet_service"],
            "size": size,
            "flags": ["timeout"],
            "timeout": WINDOW_S,
        }
        for family in spec.families
    }


def hash_text(family: int, mod: int, op: str, value: int, seed: int) -> str:
    return f"jhash {key_text(family)} mod {mod} seed {seed:#010x} {op} {value}"


def hash_json(family: int, mod: int, op: str, value: int, seed: int) -> Json:
    jhash = {"jhash": {"mod": mod, "seed": seed, "expr": key_json(family)}}
    return {"match": {"op": op, "left": jhash, "right": value}}


def log_json(spec: RuleSpec, size: int) -> Json:
    return {"log": {"prefix": LOG_PREFIX, "group": spec.nflog_group, "snaplen": size}}


def log_text(spec: RuleSpec, size: int) -> str:
    return f'log prefix "{LOG_PREFIX}" group {spec.nflog_group} snaplen {size}'


def sample_actions(spec: RuleSpec, family: int, syn_size: int) -> tuple[str, list[Json]]:
    """What a sampled SYN does: a fresh element (delete, add with its limit), counted, logged,
    accepted (so the set-full rule after it sees only the SYNs whose add failed)."""
    name, key = SET_NAMES[family], key_text(family)
    text = (
        f"delete @{name} {{ {key} }} add @{name} {{ {key} {limit_text(spec)} }} "
        f"counter {log_text(spec, syn_size)} accept"
    )
    exprs: list[Json] = [
        {"set": {"op": "delete", "elem": key_json(family), "set": f"@{name}"}},
        {
            "set": {
                "op": "add",
                "elem": key_json(family),
                "set": f"@{name}",
                "stmt": [limit_json(spec)],
            }
        },
        {"counter": None},
        log_json(spec, syn_size),
        {"accept": None},
    ]
    return text, exprs


def member_log(spec: RuleSpec, family: int, size: int) -> tuple[str, list[Json]]:
    """Every non-SYN packet of a sampled 4-tuple, while its element's limit lasts."""
    name = SET_NAMES[family]
    text = (
        f"tcp flags & (syn | ack) != syn {key_text(family)} @{name} counter {log_text(spec, size)}"
    )
    flags = {"payload": {"protocol": "tcp", "field": "flags"}}
    exprs: list[Json] = [
        {"match": {"op": "!=", "left": {"&": [flags, ["syn", "ack"]]}, "right": "syn"}},
        {"match": {"op": "==", "left": key_json(family), "right": f"@{name}"}},
        {"counter": None},
        log_json(spec, size),
    ]
    return text, exprs


def seeds_in(rules: list[Json]) -> set[int]:
    """Every jhash seed found in the listed rules (one, when they are ours and intact)."""
    found: set[int] = set()

    def walk(value: Json) -> None:
        if isinstance(value, dict):
            jhash = value.get("jhash")
            if isinstance(jhash, dict) and isinstance(jhash.get("seed"), int):
                found.add(jhash["seed"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(rules)
    return found


def without_seed(value: Json) -> Json:
    """The expression with jhash seeds left out: the seed is compared apart, as one value."""
    if isinstance(value, list):
        return [without_seed(item) for item in value]
    if isinstance(value, dict):
        return {
            key: (
                {k: v for k, v in item.items() if k != "seed"}
                if key == "jhash" and isinstance(item, dict)
                else without_seed(item)
            )
            for key, item in value.items()
        }
    return value
