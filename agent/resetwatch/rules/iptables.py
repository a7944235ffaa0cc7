"""The iptables backend: our own chain in table `mangle`, fed through `iptables-restore`.

Why this shape (the pattern kube-proxy, Calico and fail2ban use):

- `iptables-restore -w 5 --noflush` applies a whole family in one transaction and leaves every
  other rule alone. It works the same on iptables-legacy and iptables-nft hosts, because it is
  the host's own tool; python-iptables binds libiptc and would write the legacy tables, which
  an iptables-nft host does not evaluate.
- All our rules live in chain `RESETWATCH`, reached by exactly one jump from `PREROUTING`. We
  replace our chain wholesale and never edit PREROUTING except for that jump, so foreign rules
  are never touched, and removing us is "delete the jump, flush and delete the chain".
- Every rule carries an id comment (`resetwatch:sample`, `resetwatch:log-syn`, `resetwatch:log`,
  `resetwatch:jump`), so an operator reading `iptables -S` sees whose rules these are.

`check` reads `iptables -S` and compares rules after normalising what iptables rewrites on the
way back: the implicit `-m tcp`, quotes, option order inside a match, the probability (stored
in 31 bits, printed as e.g. 0.00009999983 for 0.0001) and connlabel names from
`/etc/xtables/connlabel.conf`.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
from dataclasses import dataclass, field
from typing import Optional

from .base import LOCK_WAIT, RulesBackend, RulesError, Runner, connlabel_bits, run_local
from .conflicts import iptables_label_users
from .spec import (
    CHAIN,
    HEADER_COPY,
    ID_CANDIDATES,
    ID_JUMP,
    ID_LOG,
    ID_LOG_SYN,
    ID_SAMPLE,
    LOG_PREFIX,
    RuleSpec,
)

TABLE = "mangle"
FLAVOURS = ("", "legacy", "nft")
"""Tool name suffixes: "" is whatever `iptables` is on this host; the others force one."""
FAMILY_NAMES = {4: "IPv4", 6: "IPv6"}
MULTIPORT_MAX = 15
"""The multiport match takes at most 15 ports; longer lists are split over several rules."""

Canonical = tuple[tuple[str, tuple[tuple[str, ...], ...]], ...]
"""A rule reduced to what it means: ordered (match or target, sorted options) groups."""


def quantise_probability(value: float) -> int:
    """The 31-bit integer the statistic match keeps (libxt_statistic rounds p * 2^31)."""
    return int(value * 2**31 + 0.5)


def _tokens(spec_args: list[str]) -> str:
    """Join rule arguments the way `iptables -S` prints them (comments in double quotes)."""
    out = []
    for arg in spec_args:
        out.append(f'"{arg}"' if arg.startswith("resetwatch:") else arg)
    return " ".join(out)


def sample_rules(spec: RuleSpec) -> list[list[str]]:
    """Arguments of the sample rule(s): a new TCP SYN, at random, gets the conntrack label.

    iptables matches one interface per rule and multiport 15 ports per rule, so filters expand
    into several rules; a packet arrives on one interface for one port, so it still meets
    exactly one statistic match and the sampling probability stays as configured. The
    statistic match follows every filter (it draws only for packets they accepted), and
    `connlabel --set`, a match with a side effect, follows it (only chosen SYNs are labelled).
    """
    interfaces: list[Optional[str]] = list(spec.in_interfaces) or [None]
    ports = list(spec.dports)
    port_chunks: list[Optional[list[int]]] = [
        ports[i : i + MULTIPORT_MAX] for i in range(0, len(ports), MULTIPORT_MAX)
    ] or [None]
    rules = []
    for interface in interfaces:
        for chunk in port_chunks:
            args: list[str] = []
            if interface is not None:
                args += ["-i", interface]
            else:
                args += ["!", "-i", "lo"]  # the host's own connections are not ingress
            args += ["-p", "tcp", "-m", "tcp", "--tcp-flags", "FIN,SYN,RST,ACK", "SYN"]
            if chunk is not None:
                args += ["-m", "multiport", "--dports", ",".join(str(p) for p in chunk)]
            args += ["-m", "conntrack", "--ctstate", "NEW"]
            args += ["-m", "statistic", "--mode", "random"]
            args += ["--probability", format(spec.probability, ".12g")]
            args += ["-m", "connlabel", "--label", str(spec.label), "--set"]
            args += ["-m", "comment", "--comment", ID_SAMPLE]
            rules.append(args)
    return rules


def candidate_rules(spec: RuleSpec) -> list[list[str]]:
    """The sample rules without the draw, the label and the conntrack state: counting rules
    (no target) for the SYNs the agent could have sampled, read by `candidates`."""
    out = []
    for args in sample_rules(spec):
        cut = args.index("conntrack") - 1  # "-m conntrack": where the filters end
        out.append([*args[:cut], "-m", "comment", "--comment", ID_CANDIDATES])
    return out


def log_rules(spec: RuleSpec, family: int) -> list[list[str]]:
    """Arguments of the log rules: the first packets of a labelled connection go to NFLOG,
    SYNs (SYN without ACK) by one rule, everything else by the other, because they copy
    different lengths of header (`HEADER_COPY`): together they are the method's one log rule.

    They carry no port or interface filter: the label already says the connection was chosen,
    and a sampled connection's later packets must be logged whatever path they take.
    `! --connbytes N` means "fewer than N packets so far"; conntrack counts the packet before
    mangle sees it, so N = max_packets + 1 logs exactly the first max_packets. Only the
    original (client-to-server) direction: on loopback or on a forwarding host the replies
    pass PREROUTING too, and they are not the client's packets.
    """
    other, syn = HEADER_COPY[family]
    rules = []
    for negate, rule_id, size in ((False, ID_LOG_SYN, syn), (True, ID_LOG, other)):
        rules.append([
            "-p", "tcp", "-m", "tcp", *(["!"] if negate else []), "--tcp-flags", "SYN,ACK", "SYN",
            "-m", "conntrack", "--ctdir", "ORIGINAL",
            "-m", "connlabel", "--label", str(spec.label),
            "-m", "connbytes", "!", "--connbytes", str(spec.packets_below),
            "--connbytes-mode", "packets", "--connbytes-dir", "original",
            "-m", "comment", "--comment", rule_id,
            "-j", "NFLOG", "--nflog-prefix", LOG_PREFIX,
            "--nflog-group", str(spec.nflog_group), "--nflog-size", str(size),
        ])  # fmt: skip
    return rules


JUMP_RULE = ["-m", "comment", "--comment", ID_JUMP, "-j", CHAIN]
"""The one rule we own in PREROUTING."""

_LONG_OPTIONS = {
    "--match": "-m",
    "--jump": "-j",
    "--goto": "-g",
    "--protocol": "-p",
    "--in-interface": "-i",
    "--out-interface": "-o",
    "--source": "-s",
    "--destination": "-d",
    "--set-counters": "-c",
}


def _is_option(token: str) -> bool:
    return token.startswith("-") and not re.fullmatch(r"-\d+(\.\d*)?", token)


def canonical(args: list[str]) -> Canonical:
    """Reduce rule arguments (as rendered or as `iptables -S` prints them) to their meaning.

    Options are grouped by the match or target they belong to (`-p tcp` implies `-m tcp`), the
    groups keep their order (matches run in order), options inside a group are sorted (their
    order means nothing, and iptables reorders some), counters are dropped and values that
    iptables rewrites are brought to one form.
    """
    groups: dict[str, list[tuple[str, ...]]] = {"": []}
    context = ""
    negate = False
    i = 0
    labels = connlabel_bits()
    while i < len(args):
        token = args[i]
        if token == "!":
            negate = True
            i += 1
            continue
        j = i + 1
        while j < len(args) and args[j] != "!" and not _is_option(args[j]):
            j += 1
        option = _LONG_OPTIONS.get(token, token)
        values = args[i + 1 : j]
        i = j
        if not _is_option(token):
            groups[context].append(("?", token))
        elif option == "-c":
            pass  # packet and byte counters: state, not meaning
        elif option == "-m" and values:
            context = values[0]
            groups.setdefault(context, [])
        elif option in ("-j", "-g") and values:
            context = f"{option} {values[0]}"
            groups.setdefault(context, [])
            groups[context].extend(("arg", v) for v in values[1:])
        elif option == "-p" and values:
            proto = {"6": "tcp", "17": "udp"}.get(values[0], values[0].lower())
            groups[""].append(("! -p" if negate else "-p", proto))
            context = proto
            groups.setdefault(context, [])
        else:
            if context == "statistic" and option == "--probability" and values:
                with contextlib.suppress(ValueError):  # not a number: compare as text
                    values = [str(quantise_probability(float(values[0])))]
            elif context == "connlabel" and option == "--label" and values:
                values = [str(labels.get(values[0], values[0]))]
            groups[context].append(("! " + option if negate else option, *values))
        negate = False
    return tuple(
        (name, tuple(sorted(options)))
        for name, options in groups.items()
        if name == "" or options or name.startswith("-")
    )


@dataclass
class FamilyState:
    """What one family's `iptables -S` says about our rules."""

    chain_exists: bool = False
    jumps: list[str] = field(default_factory=list)
    """PREROUTING rules jumping to our chain, each as its `-S` arguments after the chain name."""
    rules: list[str] = field(default_factory=list)
    """Rules of our chain, as `-S` arguments after the chain name."""
    above: list[str] = field(default_factory=list)
    """PREROUTING rules before the first jump to our chain (all of them when there is none)."""

    @property
    def shadowing(self) -> list[str]:
        """The rules above our jump that may end a packet's walk through PREROUTING before it
        reaches us (`-p tcp -j ACCEPT` at the top hides every connection of the family)."""
        return [rule for rule in self.above if _may_end(rule)]


def parse_listing(text: str) -> FamilyState:
    """Pick our chain, its rules and the PREROUTING jumps to it out of `iptables -S` output."""
    state = FamilyState()
    for line in text.splitlines():
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        if words[:2] == ["-N", CHAIN]:
            state.chain_exists = True
        elif words[:2] == ["-A", CHAIN]:
            state.rules.append(line.split(None, 2)[2] if len(words) > 2 else "")
        elif words[:2] == ["-A", "PREROUTING"] and _jumps_to_us(words[2:]):
            state.jumps.append(line.split(None, 2)[2])
        elif words[:2] == ["-A", "PREROUTING"] and not state.jumps:
            state.above.append(line.split(None, 2)[2] if len(words) > 2 else "")
    return state


PASS_THROUGH = frozenset(
    {"MARK", "CONNMARK", "LOG", "NFLOG", "TRACE", "DSCP", "TOS", "TTL", "HL", "CLASSIFY", "TCPMSS"}
)
"""Targets that change or log a packet and let it go on to the next rule: a rule with one of
these (or with no target, a counter) above our jump hides nothing, and leaving it there
spares a fight with a tool that wants the top for itself."""


def _may_end(rule: str) -> bool:
    """True when a PREROUTING rule may end the walk: a verdict, or a jump to a chain (which
    may ACCEPT) or any target this agent does not know to let packets through."""
    try:
        words = shlex.split(rule)
    except ValueError:
        return True
    targets = [
        words[k + 1] for k in range(len(words) - 1) if words[k] in ("-j", "--jump", "-g", "--goto")
    ]
    return any(target not in PASS_THROUGH for target in targets)


def _jumps_to_us(args: list[str]) -> bool:
    return any(
        args[k] in ("-j", "--jump", "-g", "--goto") and args[k + 1] == CHAIN
        for k in range(len(args) - 1)
    )


def _strip_counters(rule: str) -> str:
    return re.sub(r" -c \d+ \d+", "", rule)


def _conntrack_only(spec: RuleSpec) -> None:
    """iptables has no keyed hash of the 4-tuple nor a per-element packet limit."""
    if spec.sampler != "conntrack":
        raise RulesError(
            f"sampler {spec.sampler!r} needs the nft backend: use --backend nft "
            "(iptables samples only with conntrack)"
        )


class IptablesBackend(RulesBackend):
    """Rules for iptables (legacy or nf_tables flavour), IPv4 via iptables, IPv6 via ip6tables."""

    name = "iptables"

    def __init__(self, runner: Runner = run_local, flavour: str = "") -> None:
        """`flavour` "legacy" or "nft" runs `iptables-legacy`... or `iptables-nft`... instead
        of the host's default `iptables`, for hosts where both sets of tables are in use."""
        if flavour not in FLAVOURS:
            raise ValueError(f"iptables flavour: {flavour!r} is not allowed; use legacy or nft")
        super().__init__(runner)
        suffix = f"-{flavour}" if flavour else ""
        if flavour:
            self.name = f"iptables{suffix}"
        self.tools = {
            family: (f"{base}{suffix}", f"{base}{suffix}-restore")
            for family, base in ((4, "iptables"), (6, "ip6tables"))
        }

    # -- rendering -------------------------------------------------------------------------

    def render_family(
        self,
        spec: RuleSpec,
        family: int,
        add_jump: bool = True,
        delete_jumps: tuple[str, ...] = (),
    ) -> str:
        """The restore file for one family.

        Declaring our chain with `:RESETWATCH - [0:0]` creates it or, under `--noflush`,
        empties it; the explicit `-F` says the same thing for a human reading a dry run. The
        jump is inserted at the top of PREROUTING, so a foreign rule that ACCEPTs there early
        cannot hide connections from us; it is added only when missing, which is what makes
        `install` idempotent.
        """
        lines = [
            f"# {self.tools[family][1]} -w {LOCK_WAIT} --noflush",
            f"*{TABLE}",
            f":{CHAIN} - [0:0]",
        ]
        lines.append(f"-F {CHAIN}")
        for args in [*candidate_rules(spec), *sample_rules(spec), *log_rules(spec, family)]:
            lines.append(f"-A {CHAIN} {_tokens(args)}")
        lines.extend(f"-D PREROUTING {jump}" for jump in delete_jumps)
        if add_jump:
            lines.append(f"-I PREROUTING 1 {_tokens(JUMP_RULE)}")
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def render(self, spec: RuleSpec) -> str:
        """Both families' restore files, each fed to its own tool (lines with # are comments)."""
        _conntrack_only(spec)
        return "".join(self.render_family(spec, family) for family in spec.families)

    def explain(self, message: str, stdin: Optional[str]) -> str:
        """iptables-restore says "line 4 failed"; quote that line, which is what one needs."""
        found = re.search(r"line (\d+) failed", message)
        if found and stdin:
            lines = stdin.splitlines()
            number = int(found.group(1))
            if 1 <= number <= len(lines):
                return f"{message} [line {number}: {lines[number - 1]}]"
        return message

    # -- reading the kernel's state --------------------------------------------------------

    def _available(self, family: int) -> bool:
        return shutil.which(self.tools[family][0]) is not None

    def listing(self, family: int, counters: bool = False) -> str:
        """`iptables -S` of table mangle (all chains: one call, and no error if ours is absent)."""
        argv = [self.tools[family][0], "-w", str(LOCK_WAIT), "-t", TABLE]
        if counters:
            argv.append("-v")
        return self.run([*argv, "-S"]).stdout

    def state(self, family: int) -> FamilyState:
        return parse_listing(self.listing(family))

    def _restore(self, family: int, text: str) -> None:
        self.run([self.tools[family][1], "-w", str(LOCK_WAIT), "--noflush"], text)

    # -- the interface ---------------------------------------------------------------------

    def install(self, spec: RuleSpec) -> None:
        """Fill our chain from scratch and keep exactly one correct jump, per wanted family.

        Families not in the spec lose our rules, so what is installed is what was asked for.
        """
        _conntrack_only(spec)
        wanted_jump = canonical(JUMP_RULE)
        for family in (4, 6):
            if family not in spec.families:
                if self._available(family):
                    self._remove_family(family)
                continue
            state = self.state(family)
            keep = next((j for j in state.jumps if canonical(shlex.split(j)) == wanted_jump), None)
            if state.shadowing:
                keep = None  # a rule above us can hide connections: the jump goes back on top
            extra = list(state.jumps)
            if keep is not None:
                extra.remove(keep)
            text = self.render_family(spec, family, keep is None, tuple(extra))
            self._restore(family, text)

    def _remove_family(self, family: int) -> None:
        state = self.state(family)
        lines = [f"*{TABLE}"]
        lines.extend(f"-D PREROUTING {jump}" for jump in state.jumps)
        if state.chain_exists:
            lines += [f"-F {CHAIN}", f"-X {CHAIN}"]
        if len(lines) > 1:
            self._restore(family, "\n".join([*lines, "COMMIT"]) + "\n")

    def remove(self) -> None:
        """Delete every PREROUTING jump to our chain, then our chain, in each family's tool.

        A family whose tool is not installed cannot hold our rules and is skipped.
        """
        for family in (4, 6):
            if self._available(family):
                self._remove_family(family)

    def show(self) -> str:
        parts = []
        for family in (4, 6):
            header = f"# {FAMILY_NAMES[family]}: {self.tools[family][0]} -t {TABLE}"
            if not self._available(family):
                parts.append(f"{header}: {self.tools[family][0]} not installed\n")
                continue
            lines = [
                line
                for line in self.listing(family, counters=True).splitlines()
                if line.startswith((f"-N {CHAIN}", f"-A {CHAIN} "))
                or (line.startswith("-A PREROUTING ") and _jumps_to_us(shlex.split(line)))
            ]
            body = "\n".join(lines) + "\n" if lines else "# not installed\n"
            parts.append(f"{header}\n{body}")
        return "".join(parts)

    def label_users(self, spec: RuleSpec) -> list[str]:
        """`iptables-save` of every table, per wanted family: rules outside our chain that
        `--set` our label."""
        out: list[str] = []
        for family in spec.families:
            if self._available(family):
                save = [f"{self.tools[family][0]}-save"]
                text = self.run(save).stdout
                users = iptables_label_users(text, spec.label, CHAIN)
                out.extend(f"{FAMILY_NAMES[family]} {user}" for user in users)
        return out

    def candidates(self) -> Optional[int]:
        """Packets counted by the candidate rules of every family (None: none installed)."""
        total: Optional[int] = None
        for family in (4, 6):
            if not self._available(family):
                continue
            for line in self.listing(family, counters=True).splitlines():
                found = re.search(r" -c (\d+) \d+", line)
                if line.startswith(f"-A {CHAIN} ") and ID_CANDIDATES in line and found:
                    total = (total or 0) + int(found.group(1))
        return total

    def present(self) -> bool:
        for family in (4, 6):
            if self._available(family):
                state = self.state(family)
                if state.chain_exists or state.jumps:
                    return True
        return False

    def check(self, spec: RuleSpec) -> list[str]:
        _conntrack_only(spec)
        differences: list[str] = []
        for family in (4, 6):
            name = FAMILY_NAMES[family]
            if not self._available(family):
                if family in spec.families:
                    differences.append(f"{name}: {self.tools[family][0]} is not installed")
                continue
            state = self.state(family)
            if family not in spec.families:
                if state.chain_exists or state.jumps:
                    differences.append(
                        f"{name}: chain {CHAIN} is installed but family {family} is not wanted"
                    )
                continue
            differences.extend(f"{name}: {d}" for d in self._compare(spec, family, state))
        return differences

    @staticmethod
    def _compare(spec: RuleSpec, family: int, state: FamilyState) -> list[str]:
        if not state.chain_exists:
            return [f"chain {CHAIN} is missing from table {TABLE}"]
        out = []
        wanted_jump = canonical(JUMP_RULE)
        good = [j for j in state.jumps if canonical(shlex.split(j)) == wanted_jump]
        if not state.jumps:
            out.append(f"no jump from {TABLE} PREROUTING to {CHAIN}")
        elif len(state.jumps) > 1:
            out.append(f"{len(state.jumps)} jumps from PREROUTING to {CHAIN}, wanted one")
        if state.jumps and not good:
            found = _strip_counters(state.jumps[0])
            out.append(f"jump rule is `{found}`, wanted `{_tokens(JUMP_RULE)}`")
        if state.jumps and state.shadowing:
            out.append(
                f"the jump to {CHAIN} is below `{_strip_counters(state.shadowing[0])}` in "
                f"{TABLE} PREROUTING, which can hide connections from it"
            )
        wanted = [*candidate_rules(spec), *sample_rules(spec), *log_rules(spec, family)]
        for index in range(max(len(wanted), len(state.rules))):
            number = f"{CHAIN} rule {index + 1}"
            if index >= len(state.rules):
                out.append(f"{number} is missing: wanted `{_tokens(wanted[index])}`")
            elif index >= len(wanted):
                out.append(f"{number} is not wanted: `{_strip_counters(state.rules[index])}`")
            else:
                found = state.rules[index]
                try:
                    same = canonical(shlex.split(found)) == canonical(wanted[index])
                except ValueError:
                    same = False
                if not same:
                    out.append(
                        f"{number} is `{_strip_counters(found)}`, wanted `{_tokens(wanted[index])}`"
                    )
        return out
