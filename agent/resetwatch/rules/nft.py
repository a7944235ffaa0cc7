"""The nft backend: a table of our own, `table inet resetwatch`, replaced in one transaction.

Why this shape:

- An `inet` table sees IPv4 and IPv6 with one set of rules; `meta nfproto` narrows it when only
  one family is wanted. Owning a whole table means nobody else's rules share our chain, and
  removing us is deleting the table.
- `nft -f -` applies a file atomically. The file starts with `table inet resetwatch` (creates it
  if absent) and `delete table inet resetwatch`, then defines it in full, so a re-install
  replaces whatever was there (one copy, no duplicates) without a moment with no rules and
  without a separate "does it exist" query.
- The chain hooks prerouting at priority mangle (-150): after conntrack (-200) has found or
  created the connection, as the iptables mangle PREROUTING chain does.
- nft has no probability match: `numgen random mod N` draws a number below N, and
  `== 0` samples 1 connection in N (the default, 1 in 10,000), `< K` samples K in N. N and K
  are the closest fraction to the probability with N below 2^32 (exact for decimal values such
  as 0.3 = 3 in 10), so the rule samples the probability the agent reports as a metric.
- Each rule carries a `counter` (so `show` answers "is anything being sampled?") and an id
  comment.

- With `sampler = "stateless"` the table holds the rules of `stateless` instead (two sets, a
  keyed hash, no `ct` expression); its hash seed is state, like a counter: `check` compares
  the rest, and that all rules share one seed (this backend's own, once it has installed).

`check` reads `nft -j list table inet resetwatch`: the JSON form is the documented, stable
one (the text form changes between nft versions, e.g. `tcp flags & (...) == syn` is printed as
`tcp flags syn / fin,syn,rst,ack` by nft 1.0.6).
"""

from __future__ import annotations

import json
from fractions import Fraction
from typing import Any, Optional

from . import stateless
from .base import RulesBackend, RulesError, Runner, connlabel_bits, run_local
from .conflicts import nft_label_users
from .spec import (
    HEADER_COPY,
    ID_CANDIDATES,
    ID_LOG,
    ID_LOG_SYN,
    ID_SAMPLE,
    LOG_PREFIX,
    NFT_CHAIN,
    NFT_TABLE,
    RuleSpec,
)

FAMILY = "inet"
PRIORITY_MANGLE = -150
NUMGEN_MOD_MAX = 2**32 - 1
"""numgen's modulus is a 32-bit register."""

_NFPROTO = {4: "ipv4", 6: "ipv6"}
_TCP_FLAGS = ["fin", "syn", "rst", "ack"]

Json = Any
"""A value decoded from nft's JSON output."""


def k_in_n(probability: float) -> tuple[int, int]:
    """(K, N): sampling K connections in N is the probability, as closely as numgen's 32-bit
    modulus allows (exactly for 1/N and for decimals such as 0.3)."""
    fraction = Fraction(probability).limit_denominator(NUMGEN_MOD_MAX)
    return fraction.numerator, fraction.denominator


def _numgen(spec: RuleSpec) -> tuple[int, str, int]:
    """(N, operator, value) of the numgen match: `mod N == 0` for 1 in N, else `mod N < K`."""
    k, n = k_in_n(spec.probability)
    return (n, "==", 0) if k == 1 else (n, "<", k)


def _nft_set(values: list[str]) -> str:
    return values[0] if len(values) == 1 else "{ " + ", ".join(values) + " }"


def _interfaces(spec: RuleSpec) -> list[str]:
    """Interface names in nft syntax: the iptables wildcard "eth+" is "eth*" in nft."""
    return [name[:-1] + "*" if name.endswith("+") else name for name in spec.in_interfaces]


def _filters_text(spec: RuleSpec, nfproto: bool = True) -> list[str]:
    """Which new connections may be sampled: family, interface, port (nft text)."""
    parts = []
    if nfproto and len(spec.families) == 1:
        parts.append(f"meta nfproto {_NFPROTO[spec.families[0]]}")
    if spec.in_interfaces:
        parts.append("iifname " + _nft_set([f'"{name}"' for name in _interfaces(spec)]))
    else:
        parts.append('iifname != "lo"')  # the host's own connections are not ingress
    if spec.dports:
        parts.append("tcp dport " + _nft_set([str(port) for port in spec.dports]))
    return parts


def sample_rule(spec: RuleSpec) -> str:
    """A new TCP SYN, at random, gets the conntrack label (filters first, numgen last)."""
    parts = _filters_text(spec)
    parts.append("tcp flags & (fin | syn | rst | ack) == syn ct state new")
    mod, op, value = _numgen(spec)
    parts.append(f"numgen random mod {mod} {op} {value}")
    parts.append(f'counter ct label set {spec.label} comment "{ID_SAMPLE}"')
    return " ".join(parts)


def _log_variants(spec: RuleSpec) -> list[tuple[str, int, bool, int]]:
    """(id, family, SYN?, bytes copied) of each log rule: per family, because the IP header
    lengths differ, and SYNs apart from the rest (see `HEADER_COPY`)."""
    return [
        (ID_LOG_SYN if syn else ID_LOG, family, syn, HEADER_COPY[family][syn])
        for family in spec.families
        for syn in (True, False)
    ]


def log_rule(spec: RuleSpec, family: int, syn: bool, size: int, rule_id: str) -> str:
    """The first max_packets ingress packets of a labelled connection go to NFLOG.

    No port or interface filter: the label already marks the chosen connection. Only the
    original (client-to-server) direction: on loopback or on a forwarding host the replies
    pass prerouting too, and they are not the client's packets. Conntrack has
    counted the packet before priority mangle, so `< max_packets + 1` logs the first ones.
    """
    return (
        f"meta nfproto {_NFPROTO[family]} tcp flags & (syn | ack) {'==' if syn else '!='} syn "
        f"ct direction original ct label {spec.label} "
        f"ct original packets < {spec.packets_below} "
        f'counter log prefix "{LOG_PREFIX}" group {spec.nflog_group} snaplen {size} '
        f'comment "{rule_id}"'
    )


def _match(left: Json, right: Json, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _json_set(values: list[Any]) -> Json:
    return values[0] if len(values) == 1 else {"set": values}


def _filters_json(spec: RuleSpec, nfproto: bool = True) -> list[Json]:
    """`_filters_text` as `nft -j` lists it."""
    out: list[Json] = []
    if nfproto and len(spec.families) == 1:
        out.append(_match({"meta": {"key": "nfproto"}}, _NFPROTO[spec.families[0]]))
    if spec.in_interfaces:
        out.append(_match({"meta": {"key": "iifname"}}, _json_set(_interfaces(spec))))
    else:
        out.append(_match({"meta": {"key": "iifname"}}, "lo", "!="))
    if spec.dports:
        dport = {"payload": {"protocol": "tcp", "field": "dport"}}
        out.append(_match(dport, _json_set(list(spec.dports))))
    return out


_FLAGS = {"payload": {"protocol": "tcp", "field": "flags"}}
_PLAIN_SYN = "tcp flags & (fin | syn | rst | ack) == syn"


_INVERSE = {"==": "!=", "<": ">="}


def stateless_rules(spec: RuleSpec, seed: int) -> list[tuple[str, str, list[Json]]]:
    """The conntrack-free rules (see `stateless`), per family: pass, sample, set full, log.

    The first rule hashes a SYN once and accepts those the hash does not choose (nearly all),
    so the two after it see only chosen SYNs and need no hash of their own. nft adds (and
    lists no) `meta nfproto` to a rule that reads `ip saddr` or `ip6 saddr`; only the set-full
    rule, which reads no address, names the family."""
    mod, op, value = _numgen(spec)
    syn_text = " ".join([*_filters_text(spec, nfproto=False), _PLAIN_SYN])
    syn_json = [
        *_filters_json(spec, nfproto=False),
        _match({"&": [_FLAGS, list(_TCP_FLAGS)]}, "syn"),
    ]
    rules = []
    for family in spec.families:
        skip = stateless.hash_text(family, mod, _INVERSE[op], value, seed)
        skip_json = stateless.hash_json(family, mod, _INVERSE[op], value, seed)
        nfproto = _match({"meta": {"key": "nfproto"}}, _NFPROTO[family])
        syn_size, other_size = HEADER_COPY[family][True], HEADER_COPY[family][False]
        act_text, act_json = stateless.sample_actions(spec, family, syn_size)
        log_text, log_json = stateless.member_log(spec, family, other_size)
        pass_id, full_id = stateless.ID_PASS, stateless.ID_FULL
        rules += [
            (
                pass_id,
                f'{syn_text} {skip} accept comment "{pass_id}"',
                [*syn_json, skip_json, {"accept": None}],
            ),
            (ID_SAMPLE, f'{syn_text} {act_text} comment "{ID_SAMPLE}"', syn_json + act_json),
            (
                full_id,
                f'meta nfproto {_NFPROTO[family]} {syn_text} counter comment "{full_id}"',
                [nfproto, *syn_json, {"counter": None}],
            ),
            (ID_LOG, f'{log_text} comment "{ID_LOG}"', log_json),
        ]
    return rules


def candidate_rule(spec: RuleSpec) -> tuple[str, str, list[Json]]:
    """Counts the SYNs either sampler could have drawn for: its filters, no draw and no
    conntrack state (a NOTRACK rule that blinds the sampler leaves them counted)."""
    text = " ".join([*_filters_text(spec), _PLAIN_SYN])
    exprs = [*_filters_json(spec), _match({"&": [_FLAGS, list(_TCP_FLAGS)]}, "syn")]
    return (
        ID_CANDIDATES,
        f'{text} counter comment "{ID_CANDIDATES}"',
        [*exprs, {"counter": None}],
    )


def wanted_rules(spec: RuleSpec, seed: int = 0) -> list[tuple[str, str, list[Json]]]:
    """(id comment, rendered text, expressions as `nft -j` lists them) for each of our rules;
    `seed` keys the stateless sampler's hash. The candidate counter comes first."""
    return [candidate_rule(spec), *_sampler_rules(spec, seed)]


def _sampler_rules(spec: RuleSpec, seed: int) -> list[tuple[str, str, list[Json]]]:
    if spec.sampler == "stateless":
        return stateless_rules(spec, seed)
    mod, op, value = _numgen(spec)
    sample: list[Json] = _filters_json(spec)
    flags = _FLAGS
    sample += [
        _match({"&": [flags, list(_TCP_FLAGS)]}, "syn"),
        _match({"ct": {"key": "state"}}, "new", "in"),
        _match({"numgen": {"mode": "random", "mod": mod, "offset": 0}}, value, op),
        {"counter": None},
        {"mangle": {"key": {"ct": {"key": "label"}}, "value": spec.label}},
    ]
    rules = [(ID_SAMPLE, sample_rule(spec), sample)]
    for rule_id, family, syn, size in _log_variants(spec):
        log: list[Json] = [
            _match({"meta": {"key": "nfproto"}}, _NFPROTO[family]),
            _match({"&": [flags, ["syn", "ack"]]}, "syn", "==" if syn else "!="),
            _match({"ct": {"key": "direction"}}, "original"),
            _match({"ct": {"key": "label"}}, spec.label, "in"),
            _match({"ct": {"key": "packets", "dir": "original"}}, spec.packets_below, "<"),
            {"counter": None},
            {"log": {"prefix": LOG_PREFIX, "group": spec.nflog_group, "snaplen": size}},
        ]
        rules.append((rule_id, log_rule(spec, family, syn, size, rule_id), log))
    return rules


def normalise(value: Json, labels: Optional[dict[str, int]] = None) -> Json:
    """Bring one expression to a single form, whichever way nft chose to print it.

    Counter values are state, not meaning; an anonymous set's order and a one-element set mean
    the same as their sorted and scalar forms; nft writes the implicit match of bitmask and
    label types as "in" where we might write "=="; `ct label` may come back as the name an
    administrator gave our bit in connlabel.conf.
    """
    labels = connlabel_bits() if labels is None else labels
    if isinstance(value, list):
        items = [normalise(item, labels) for item in value]
        if all(isinstance(item, (str, int)) for item in items):
            return sorted(items, key=str)
        return items
    if not isinstance(value, dict):
        return value
    if "counter" in value and len(value) == 1:
        return {"counter": None}
    if "set" in value and len(value) == 1 and isinstance(value["set"], list):
        items = sorted((normalise(item, labels) for item in value["set"]), key=json.dumps)
        return items[0] if len(items) == 1 else {"set": items}
    if "match" in value and isinstance(value["match"], dict):
        match = dict(value["match"])
        if match.get("op") == "in":
            match["op"] = "=="
        if match.get("left") == {"ct": {"key": "label"}} and isinstance(match.get("right"), str):
            match["right"] = labels.get(match["right"], match["right"])
        return {"match": {k: normalise(v, labels) for k, v in match.items()}}
    if "mangle" in value and isinstance(value["mangle"], dict):
        mangle = dict(value["mangle"])
        if mangle.get("key") == {"ct": {"key": "label"}} and isinstance(mangle.get("value"), str):
            mangle["value"] = labels.get(mangle["value"], mangle["value"])
        return {"mangle": mangle}
    if "numgen" in value and isinstance(value["numgen"], dict):
        return {"numgen": {"offset": 0, **value["numgen"]}}
    return {key: normalise(item, labels) for key, item in value.items()}


def describe(expr: Json) -> str:
    """A short nft-like text for one JSON expression, for messages an operator reads."""
    if isinstance(expr, str):
        return expr
    if isinstance(expr, list):
        return "(" + " | ".join(describe(item) for item in expr) + ")"
    if not isinstance(expr, dict) or len(expr) != 1:
        return json.dumps(expr, sort_keys=True)
    ((kind, body),) = expr.items()
    if kind == "match" and isinstance(body, dict):
        op = "" if body.get("op") == "in" else f"{body.get('op')} "
        return f"{describe(body.get('left'))} {op}{describe(body.get('right'))}"
    if kind == "set" and isinstance(body, dict):
        return f"{body.get('op')} {body.get('set')} {{ {describe(body.get('elem'))} }}"
    if kind == "concat" and isinstance(body, list):
        return " . ".join(describe(item) for item in body)
    if kind == "jhash" and isinstance(body, dict):
        return f"jhash {describe(body.get('expr'))} mod {body.get('mod')}"
    if kind == "set" and isinstance(body, list):
        return "{ " + ", ".join(describe(item) for item in body) + " }"
    if kind in ("meta", "ct") and isinstance(body, dict):
        direction = f" {body['dir']}" if "dir" in body else ""
        return f"{kind}{direction} {body.get('key')}"
    if kind == "payload" and isinstance(body, dict):
        return f"{body.get('protocol')} {body.get('field')}"
    if kind == "&" and isinstance(body, list) and len(body) == 2:
        return f"{describe(body[0])} & {describe(body[1])}"
    if kind == "numgen" and isinstance(body, dict):
        return f"numgen {body.get('mode')} mod {body.get('mod')}"
    if kind == "counter":
        return "counter"
    if kind == "mangle" and isinstance(body, dict):
        return f"{describe(body.get('key'))} set {describe(body.get('value'))}"
    if kind == "log" and isinstance(body, dict):
        return "log " + " ".join(f"{k} {json.dumps(v)}" for k, v in body.items())
    return json.dumps(expr, sort_keys=True)


def _describe_rule(rule: Json) -> str:
    text = " ".join(describe(expr) for expr in rule.get("expr", []))
    comment = rule.get("comment")
    return f'{text} comment "{comment}"' if comment else text


class NftBackend(RulesBackend):
    """Rules in `table inet resetwatch`, driven through `nft -f -` and `nft -j list`."""

    name = "nft"

    def __init__(self, runner: Runner = run_local, *, set_size: int = stateless.SET_SIZE) -> None:
        super().__init__(runner)
        self.set_size = set_size
        self.seed: Optional[int] = None
        """The stateless sampler's hash key: drawn (or taken from the installed rules) at the
        first install, then kept, so a repair does not change any connection's decision."""

    def _seed(self) -> int:
        if self.seed is None:
            self.seed = stateless.new_seed()
        return self.seed

    def render(self, spec: RuleSpec) -> str:
        """The whole file `nft -f -` reads: create-if-absent, delete, define, in one go."""
        seed = self._seed() if spec.sampler == "stateless" else 0
        rules = "".join(f"\t\t{text}\n" for _id, text, _expr in wanted_rules(spec, seed))
        sets = stateless.set_text(spec, self.set_size) if spec.sampler == "stateless" else ""
        return (
            f"table {FAMILY} {NFT_TABLE}\n"
            f"delete table {FAMILY} {NFT_TABLE}\n"
            f"table {FAMILY} {NFT_TABLE} {{\n"
            f"{sets}"
            f"\tchain {NFT_CHAIN} {{\n"
            f"\t\ttype filter hook prerouting priority mangle; policy accept;\n"
            f"{rules}"
            f"\t}}\n"
            f"}}\n"
        )

    def install(self, spec: RuleSpec) -> None:
        if spec.sampler == "stateless" and self.seed is None:
            # A new agent run over rules left installed keeps their seed (and decisions).
            seeds = stateless.seeds_in(self._rules(self._objects() or []))
            self.seed = seeds.pop() if len(seeds) == 1 else stateless.new_seed()
        self.run(["nft", "-f", "-"], self.render(spec))

    def remove(self) -> None:
        """Delete our table; declaring it first makes the delete a no-op when it is absent."""
        text = f"table {FAMILY} {NFT_TABLE}\ndelete table {FAMILY} {NFT_TABLE}\n"
        self.run(["nft", "-f", "-"], text)

    def _list(self, json_output: bool) -> Optional[str]:
        """Our table as nft lists it, or None when it does not exist."""
        argv = ["nft", *(["-j"] if json_output else []), "list", "table", FAMILY, NFT_TABLE]
        result = self.run(argv, check=False)
        if result.returncode == 0:
            return result.stdout
        if "No such file or directory" in (result.stderr or ""):
            return None
        raise self.error(argv, result, None)

    def _objects(self) -> Optional[list[Json]]:
        """The objects of `nft -j list table`, or None when the table does not exist."""
        text = self._list(json_output=True)
        if text is None:
            return None
        try:
            return [obj for obj in json.loads(text).get("nftables", []) if isinstance(obj, dict)]
        except (ValueError, AttributeError) as err:
            raise RulesError(f"`nft -j list table {FAMILY} {NFT_TABLE}`: bad JSON ({err})") from err

    @staticmethod
    def _rules(objects: list[Json]) -> list[Json]:
        return [
            obj["rule"]
            for obj in objects
            if "rule" in obj and obj["rule"].get("chain") == NFT_CHAIN
        ]

    def show(self) -> str:
        text = self._list(json_output=False)
        return text if text is not None else f"# table {FAMILY} {NFT_TABLE}: not installed\n"

    def present(self) -> bool:
        return self._list(json_output=False) is not None

    def label_users(self, spec: RuleSpec) -> list[str]:
        """Rules of the whole ruleset, outside our table, that `ct label set` our bit."""
        if spec.sampler != "conntrack":
            return []
        argv = ["nft", "-j", "list", "ruleset"]
        try:
            objects = json.loads(self.run(argv).stdout).get("nftables", [])
        except (ValueError, AttributeError) as err:
            raise RulesError(f"`{' '.join(argv)}`: bad JSON ({err})") from err
        return nft_label_users(objects, spec.label, (FAMILY, NFT_TABLE))

    def candidates(self) -> Optional[int]:
        """Packets the candidate rule counted since the install (None: not installed)."""
        return self._counted(ID_CANDIDATES)

    def set_full(self) -> Optional[int]:
        """Sampled SYNs the stateless sampler's full set could not take, since the install."""
        return self._counted(stateless.ID_FULL)

    def _counted(self, rule_id: str) -> Optional[int]:
        """The summed counters of our rules commented `rule_id` (None: none installed)."""
        objects = self._objects()
        if objects is None:
            return None
        counts = [rule_counter(r) for r in self._rules(objects) if r.get("comment") == rule_id]
        return sum(counts) if counts else None

    def check(self, spec: RuleSpec) -> list[str]:
        objects = self._objects()
        if objects is None:
            return [f"table {FAMILY} {NFT_TABLE} is missing"]
        out: list[str] = []
        chains = [obj["chain"] for obj in objects if "chain" in obj]
        ours = [c for c in chains if c.get("name") == NFT_CHAIN]
        out.extend(f"chain {c.get('name')} is not wanted" for c in chains if c not in ours)
        for kind in ("map", "flowtable", "ct helper", "counter", "quota", "limit"):
            out.extend(f"{kind} {o[kind].get('name')} is not wanted" for o in objects if kind in o)
        wanted_sets = stateless.set_json(spec, self.set_size) if spec.sampler == "stateless" else {}
        out.extend(_check_sets([o["set"] for o in objects if "set" in o], wanted_sets))
        if not ours:
            return [*out, f"chain {NFT_CHAIN} is missing"]
        chain = ours[0]
        base = {"type": "filter", "hook": "prerouting", "prio": PRIORITY_MANGLE, "policy": "accept"}
        for key, value in base.items():
            if chain.get(key) != value:
                out.append(f"chain {NFT_CHAIN}: {key} is {chain.get(key)!r}, wanted {value!r}")
        rules = self._rules(objects)
        out.extend(self._check_seed(spec, rules))
        out.extend(_check_rules(rules, wanted_rules(spec, self.seed or 0)))
        return out

    def _check_seed(self, spec: RuleSpec, rules: list[Json]) -> list[str]:
        """The stateless rules share one hash seed: this backend's own, once it installed them
        (a table re-installed by someone else changes decisions), else whichever they have."""
        if spec.sampler != "stateless":
            return []
        seeds = stateless.seeds_in(rules)
        if len(seeds) > 1:
            return ["the sampling rules hash with different seeds"]
        if self.seed is not None and seeds and seeds != {self.seed}:
            return ["the sampling rules hash with another seed than this agent installed"]
        return []


def rule_counter(rule: Json) -> int:
    """Packets the counter of a listed rule has seen (0 without one)."""
    for expr in rule.get("expr", []):
        if isinstance(expr, dict) and isinstance(expr.get("counter"), dict):
            return int(expr["counter"].get("packets", 0))
    return 0


def _check_sets(found: list[Json], wanted: dict[str, Json]) -> list[str]:
    names = {item.get("name") for item in found}
    out = [f"set {name} is missing" for name in wanted if name not in names]
    for item in found:
        name = item.get("name")
        if name not in wanted:
            out.append(f"set {name} is not wanted")
            continue
        for key, value in wanted[name].items():
            got = item.get(key)
            if key == "flags":  # nft lists "dynamic" or not, by version
                got = [flag for flag in got or [] if flag != "dynamic"]
            if got != value:
                out.append(f"set {name}: {key} is {got!r}, wanted {value!r}")
    return out


def _check_rules(rules: list[Json], wanted: list[tuple[str, str, list[Json]]]) -> list[str]:
    """Rule by rule, in order: what differs, as text an operator reads."""
    out: list[str] = []
    labels = connlabel_bits()
    for index in range(max(len(wanted), len(rules))):
        number = f"rule {index + 1}"
        if index >= len(rules):
            out.append(f"{number} is missing: wanted `{wanted[index][1]}`")
            continue
        found = rules[index]
        if index >= len(wanted):
            out.append(f"{number} is not wanted: `{_describe_rule(found)}`")
            continue
        rule_id, rule_text, exprs = wanted[index]
        same = found.get("comment") == rule_id and normalise(
            stateless.without_seed(found.get("expr", [])), labels
        ) == normalise(stateless.without_seed(exprs), labels)
        if not same:
            out.append(f"{number} is `{_describe_rule(found)}`, wanted `{rule_text}`")
    return out
