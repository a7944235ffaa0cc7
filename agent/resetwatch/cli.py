"""The `resetwatch` command line. Bad flags end with one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import IO, Any, Callable, NoReturn, Optional

from . import __version__, assets

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad flags, config or input named by the user: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def _number(kind: type, text: str, ok: Callable[[float], bool], must: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
    if not ok(value) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be {must}")
    return value


def positive_float(text: str) -> float:
    return float(_number(float, text, lambda v: v > 0, "a positive number of seconds"))


def nonnegative_float(text: str) -> float:
    return float(_number(float, text, lambda v: v >= 0, "zero or a positive number"))


def positive_int(text: str) -> int:
    return int(_number(int, text, lambda v: v >= 1, "at least 1"))


def _add_replay(sub: Any) -> None:
    from .decode import supported

    p = sub.add_parser(
        "replay",
        help="classify the TCP connections in pcap/pcapng files",
        description=(
            "Run the classifier over capture files (pcap or pcapng), using the packet "
            "timestamps as the clock. Several files are read in order as one stream. "
            + supported()
        ),
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="capture files, read in order")
    p.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="ADDR|CIDR",
        help="packets TO these addresses are ingress (repeatable); without it every packet is "
        "ingress, as in an NFLOG capture of the sampling rules",
    )
    p.add_argument(
        "--idle-timeout",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="a flow with no RST or FIN and no packet for this long ends as a timeout "
        "(default: 300, or the preset's)",
    )
    p.add_argument(
        "--close-linger",
        type=nonnegative_float,
        default=None,
        metavar="SECONDS",
        help="after the first RST or FIN, wait this long for more packets before judging "
        "(default: 10, or the preset's)",
    )
    p.add_argument(
        "--ipdb",
        action="append",
        default=[],
        metavar="PATH",
        help="MaxMind DB file naming each client's network (repeatable: an ASN file and a "
        "country file, or one with both); records then carry asn, as_name and country",
    )
    p.add_argument(
        "--by",
        choices=("asn", "country"),
        help="also split the summary by client network or country (needs --ipdb)",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="named clock settings: 'paper' judges 3 s of silence a timeout, as the SIGCOMM "
        "'23 study did (--idle-timeout 3 --close-linger 1); explicit flags still win",
    )
    p.add_argument(
        "--max-flows",
        type=positive_int,
        default=1_000_000,
        metavar="N",
        help="flows held at once; beyond it the least recently active are evicted "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="table: readable summary; json: the public API's summary shape plus counts",
    )
    p.add_argument(
        "--records",
        metavar="PATH|-",
        help="write one JSON object per judged or excluded flow to PATH (- for stdout; the "
        "summary then goes to stderr)",
    )
    p.set_defaults(func=cmd_replay)


PRESETS: dict[str, dict[str, float]] = {
    "default": {"idle_timeout": 300.0, "close_linger": 10.0},
    "paper": {"idle_timeout": 3.0, "close_linger": 1.0},
}
"""Clock settings by name (docs/methodology.md, Signatures, says what `paper` changes)."""


def _apply_preset(args: argparse.Namespace) -> None:
    preset = PRESETS[args.preset or "default"]
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def cmd_replay(args: argparse.Namespace) -> int:
    import time

    from .engine import Engine
    from .event import Output
    from .outputs import OutputSet, OutputSettings
    from .records import STDOUT
    from .replay import ingress_filter, replay
    from .summary import Summary

    _apply_preset(args)
    if args.close_linger >= args.idle_timeout:
        raise UsageError(
            f"--close-linger {args.close_linger:g} must be less than "
            f"--idle-timeout {args.idle_timeout:g}"
        )
    try:
        is_ingress = ingress_filter(args.server)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.by and not args.ipdb:
        raise UsageError(f"--by {args.by} needs --ipdb (which database names the networks)")
    network_of = None
    if args.ipdb:
        from .ipdb import IpdbError
        from .networks import Networks

        try:
            network_of = Networks.open(args.ipdb).of
        except IpdbError as error:
            raise UsageError(f"--ipdb: {error}") from None
    summary = Summary()
    out: IO[str] = sys.stderr if args.records == STDOUT else sys.stdout
    outputs = OutputSet(time.monotonic, say=lambda line: None)  # reported once, below
    outputs.configure(OutputSettings(records=args.records or "", truncate=True))
    for state in outputs.failing():
        raise UsageError(f"--records {args.records}: {state.error}")
    sinks: list[Output] = [summary, *outputs.outputs]
    engine = Engine(
        sinks,
        idle_timeout=args.idle_timeout,
        close_linger=args.close_linger,
        max_flows=args.max_flows,
        network_of=network_of,
    )
    try:
        stats = replay(args.files, engine, is_ingress)
    finally:
        outputs.close()
    _print_replay(args, out, summary, stats, engine.invalid)
    for state in outputs.states.values():
        if state.errors:
            print(f"resetwatch replay: --records {args.records}: {state.error or 'failed'} "
                  f"({state.dropped} records lost)", file=sys.stderr)
            return EXIT_USAGE
    return EXIT_USAGE if stats.errors else 0


def _print_replay(
    args: argparse.Namespace, out: IO[str], summary: Any, stats: Any, invalid_by: Any
) -> None:
    """The summary (table or JSON envelope), then one stderr line per unreadable file and a
    hint when the clocks left most flows truncated. Nothing is summed from a run that read
    no packet at all: a table of zeros would look like a result."""
    from . import envelope
    from .api import iso
    from .flows import Exclusion
    from .report import network_rows, network_table, summary_table

    tally = summary.tally
    invalid = {reason.value: count for reason, count in invalid_by.items()}
    readable = stats.records > 0 or not stats.errors
    if args.format == "json":
        first, last = summary.first_ts, summary.last_ts
        meta = {
            "dateRange": [
                {"startTime": iso(first), "endTime": iso(last)} if first is not None else {}
            ],
            "lastUpdated": iso(last) if last is not None else None,
            "samplingProbability": None,
            "files": [str(f) for f in args.files],
            "packets": stats.packets,
            "records": stats.records,
            "egressSkipped": stats.egress,
            "invalidPackets": invalid,
            "idleTimeout": args.idle_timeout,
            "closeLinger": args.close_linger,
        }
        body: dict[str, Any] = (
            envelope.summary(meta, {"summary_0": tally}) if readable else {"result": None}
        )
        if readable and args.by:
            body["result"][f"by_{args.by}"] = network_rows(tally, args.by, summary.as_names)
        if stats.errors:
            body["success"] = False
            body["errors"] = [{"code": EXIT_USAGE, "message": line} for line in stats.errors]
        out.write(json.dumps(body, indent=2) + "\n")
    elif readable:
        extra = [
            ("files", str(stats.files)),
            ("packets", f"{stats.packets:,}"),
        ]
        if args.server:
            extra.append(("egress skipped", f"{stats.egress:,}"))
        out.write(summary_table(tally, title="resetwatch replay", extra=extra, invalid=invalid))
        if args.by:
            out.write(network_table(tally, args.by, summary.as_names))
    for line in stats.errors:
        print(f"resetwatch replay: {line}", file=sys.stderr)
    truncated = tally.excluded_by()[Exclusion.TRUNCATED]
    if truncated * 2 > tally.classified + tally.excluded_total:
        print(
            f"resetwatch replay: {truncated:,} flows were still open when the capture ended and "
            f"are counted as truncated; a capture shorter than --idle-timeout "
            f"({args.idle_timeout:g} s) leaves most flows so: try a smaller --idle-timeout",
            file=sys.stderr,
        )


def _setting_flag(text: Any, setting: Any) -> Any:
    """A flag's text in the type the TOML file would give, so both are checked alike."""
    default = setting.default
    if isinstance(default, tuple):
        # A list flag is repeatable and takes comma-separated values too.
        texts = text if isinstance(text, list) else [text]
        items = [item.strip() for part in texts for item in part.split(",") if item.strip()]
        return [int(i) if i.isdigit() else i for i in items] if setting.key == "dports" else items
    for kind in (int, float) if not isinstance(default, str) else ():
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _add_settings(p: argparse.ArgumentParser, keys: Optional[Sequence[str]] = None) -> None:
    from .config import DEFAULT_CONFIG, SETTINGS

    p.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML config file (default: {DEFAULT_CONFIG} if it exists); flags win over it",
    )
    for setting in SETTINGS:
        if keys is not None and setting.key not in keys:
            continue
        flag = "--" + setting.key.replace("_", "-")
        if isinstance(setting.default, bool):
            p.add_argument(flag, action="store_true", default=None, help=setting.help)
            continue
        shown = setting.default
        if isinstance(shown, tuple):
            shown = ",".join(str(v) for v in shown)
        repeatable = isinstance(setting.default, tuple)
        extra = " (repeatable, or comma-separated)" if repeatable else ""
        # An empty default is already described by the help text ("empty: ...").
        default = f" (default: {shown})" if shown != "" else ""
        p.add_argument(
            flag,
            metavar=setting.metavar or "VALUE",
            type=str,
            default=None,
            action="append" if repeatable else "store",
            help=f"{setting.help}{extra}{default}",
        )


def _config_from(args: argparse.Namespace, keys: Optional[Sequence[str]] = None) -> Any:
    """Merge defaults, the config file and the flags; ConfigError becomes a UsageError."""
    from pathlib import Path

    from .config import BY_KEY, DEFAULT_CONFIG, ConfigError, load

    overrides = {}
    for key, setting in BY_KEY.items():
        if keys is not None and key not in keys:
            continue
        value = getattr(args, key, None)
        if value is None:
            continue
        overrides[key] = value if isinstance(value, bool) else _setting_flag(value, setting)
    path: Optional[Path] = Path(args.config) if args.config else None
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    try:
        return load(path, overrides)
    except ConfigError as error:
        raise UsageError(str(error)) from None


def _add_run(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run the agent: sample connections in the kernel and export verdicts",
        description=(
            "Install the sampling rules, read the sampled packets from NFLOG, judge each "
            "connection when it ends and export the counts to Prometheus. Runs in the "
            "foreground; SIGTERM or Ctrl-C stops it cleanly (rules removed unless "
            "--keep-rules), SIGHUP reloads the config file."
        ),
    )
    _add_settings(p)
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    import logging

    from .config import Config, ConfigError
    from .daemon import Agent, StartError

    def reload() -> Config:
        # The agent keeps running on a ConfigError; a UsageError would end it.
        try:
            return _config_from(args)  # type: ignore[no-any-return]
        except UsageError as error:
            raise ConfigError(str(error)) from None

    config = _config_from(args)
    logging.basicConfig(level=logging.INFO, format="resetwatch: %(message)s")
    agent = Agent(config, reload=reload)
    try:
        return agent.run()
    except StartError as error:
        print(f"resetwatch run: cannot start: {error}", file=sys.stderr)
        return 1


RULE_KEYS = (
    "probability", "label", "nflog_group", "backend", "sampler", "dports", "interfaces",
)  # fmt: skip


RULE_ACTIONS = {
    "install": (
        "install the rules as configured",
        "Install the two sampling rules (or make the installed ones equal the configured "
        "ones); running it twice leaves one copy. --dry-run prints the text it would apply.",
    ),
    "remove": (
        "remove the rules",
        "Delete the agent's rules and nothing else (other rules in the same tables stay); "
        "a no-op when they are absent.",
    ),
    "show": (
        "print the installed rules with their counters",
        "Print the agent's installed rules as the backend's tool lists them, with packet "
        "and byte counters.",
    ),
    "check": (
        "compare the installed rules with the running agent's (or the configured) ones",
        "Exit 0 when the installed rules equal the expected ones, 1 otherwise, saying what "
        "differs. Expected: what the running agent uses (asked over its listener: the "
        "config file's listen, or --agent), else the config file; flags given here win. "
        "The first line says which was compared.",
    ),
}


def _add_rules(sub: Any) -> None:
    p = sub.add_parser(
        "rules",
        help="install, remove, show or check the sampling rules",
        description=(
            "Manage the two netfilter rules that sample new ingress TCP connections and log "
            "their first 10 packets to NFLOG. `resetwatch rules ACTION --help` explains an "
            "action and its flags."
        ),
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, (summary, description) in RULE_ACTIONS.items():
        a = actions.add_parser(action, help=summary, description=description)
        if action == "install":
            a.add_argument("--dry-run", action="store_true", help="print what would be applied")
        if action == "check":
            a.add_argument("--agent", metavar="URL",
                           help="the running agent to compare with (default: the config "
                           "file's listen address)")  # fmt: skip
        _add_settings(a, RULE_KEYS)
        a.set_defaults(func=cmd_rules, dry_run=False)


def _expected_by_agent(args: argparse.Namespace, config: Any) -> Any:
    """For `check`: the running agent's rule settings where it answers (flags given here
    still win), else the config file's; prints which it compares with."""
    from dataclasses import replace

    from .config import BY_KEY, ConfigError
    from .status import agent_settings, resolve_agent

    try:
        url = resolve_agent(getattr(args, "agent", None), args.config)
    except ConfigError as error:
        raise UsageError(str(error)) from None
    running = agent_settings(url)
    if running is None:
        print(f"resetwatch rules: comparing with {config.source} (no agent answered at {url})")
        return config
    given = {key for key in RULE_KEYS if getattr(args, key, None) is not None}
    taken = {key: BY_KEY[key].check(running[key]) for key in RULE_KEYS
             if key in running and key not in given}  # fmt: skip
    print(f"resetwatch rules: comparing with the running agent at {url}")
    return replace(config, **taken, source=f"the running agent at {url}")


def cmd_rules(args: argparse.Namespace) -> int:
    from .config import rule_spec
    from .rules import RulesError, backend_for
    from .rules.tracking import untracked_hint

    config = _config_from(args, RULE_KEYS)
    if args.action == "check":
        config = _expected_by_agent(args, config)
    try:
        backend = backend_for(config.backend)
        spec = rule_spec(config)
        if args.action == "install":
            if args.dry_run:
                sys.stdout.write(backend.render(spec))
                return 0
            hint = untracked_hint(spec.sampler)
            backend.install(spec)
            print(f"resetwatch rules: installed ({backend.name})")
            if hint:
                print(f"resetwatch rules: {hint}", file=sys.stderr)
        elif args.action == "remove":
            backend.remove()
            print(f"resetwatch rules: removed ({backend.name})")
        elif args.action == "show":
            sys.stdout.write(backend.show())
        else:
            differences = backend.check(spec)
            for line in differences:
                print(line)
            if differences:
                return 1
            print(f"resetwatch rules: installed as configured ({backend.name})")
    except (RulesError, ValueError) as error:
        print(f"resetwatch rules: {error}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------ status


def _add_status(sub: Any) -> None:
    from .config import DEFAULT_CONFIG, DEFAULT_PORT

    p = sub.add_parser(
        "status",
        help="ask the running agent and print a summary",
        description=(
            "Ask a running agent (over HTTP: its local API and /metrics) for the category "
            "shares, counts and top tags of a recent range, and for its health: sampling "
            "probability, rules, NFLOG loss, flows held, last packet. Exit 1 when no agent "
            "answers."
        ),
    )
    p.add_argument(
        "--agent",
        metavar="URL",
        help="the agent's address, e.g. http://127.0.0.1:9824 (default: the listen setting "
        f"of the config file, else 127.0.0.1:{DEFAULT_PORT})",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help=f"config file whose listen setting gives the address (default: {DEFAULT_CONFIG} "
        "if it exists)",
    )
    p.add_argument(
        "--range",
        default="1h",
        metavar="RANGE",
        help="how far back to look: 15m, 1h, 12h, 1d, 7d, ... (default: %(default)s)",
    )
    p.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="table: readable; json: the API answers and the health read from /metrics",
    )
    p.add_argument(
        "--by",
        choices=("asn", "country"),
        help="also a table per client network or country (as replay --by gives), from the "
        "agent's per-network history: its busiest network_top networks, the rest as other",
    )
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .status import StatusError, gather, render, resolve_agent

    try:
        base = resolve_agent(args.agent, args.config)
    except ConfigError as error:
        raise UsageError(str(error)) from None
    try:
        text = render(gather(base, args.range, args.by), args.format)
    except StatusError as error:
        if error.usage:
            # The agent names its own parameter (dateRange); the user typed --range.
            message = str(error).replace("dateRange: ", "", 1)
            raise UsageError(f"--range: {message}") from None
        print(f"resetwatch status: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


# ------------------------------------------------------------------ demo


def _listen_address(text: str) -> tuple[str, int]:
    from .demo.forward import parse_listen

    try:
        return parse_listen(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run the agent in a lab of network namespaces, with traffic",
        description=(
            "Build a throw-away lab of three network namespaces (clients, a tampering "
            "middlebox, a server), run the real agent and a web server in the server "
            "namespace, send a few minutes of mixed traffic (visitors, aborted and silent "
            "clients, ZMap, blocked and zero-rated names), show progress, then print the "
            "agent's verdicts. The host's interfaces, routes and firewall are never touched; "
            "everything is removed at the end, on Ctrl-C, on SIGTERM and after errors. Needs "
            "root, zmap and the [demo] extra (pyroute2, netfilterqueue, maxminddb). The "
            "clients come from three lab networks and the middlebox sits on one's path: "
            "the last table shows that network standing out."
        ),
    )
    p.add_argument(
        "--duration",
        type=positive_float,
        default=180.0,
        metavar="SECONDS",
        help="how long the clients send traffic (default: %(default)g); the agent then needs "
        "about 15 s more to judge the connections that went silent",
    )
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="after the traffic and the summary, keep the lab and the agent up (metrics "
        "reachable at --listen) until Ctrl-C",
    )
    p.add_argument(
        "--listen",
        type=_listen_address,
        default=("127.0.0.1", 9825),
        metavar="ADDR:PORT",
        help="where, on this host, to serve the lab agent's /metrics while the demo runs (a "
        "forwarder into the lab; port 0 picks a free one; default: 127.0.0.1:9825, next to "
        "a real agent's 9824)",
    )
    p.add_argument(
        "--records",
        metavar="PATH",
        help="save a copy of the agent's records (one JSON line per judged or excluded "
        "connection) to PATH",
    )
    p.add_argument(
        "--traffic-log",
        metavar="PATH",
        help="save what each client did (one JSON line per connection: behaviour, address, "
        "port, what the client saw) to PATH, to compare with --records",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=1,
        metavar="N",
        help="seed for the traffic's random choices (default: %(default)s): the same seed "
        "gives the same mix of behaviours",
    )
    p.add_argument(
        "--ipdb",
        action="append",
        metavar="PATH",
        help="MaxMind DB files naming the clients' networks, as for `run --ipdb` (repeatable; "
        "default: the lab's own small database, which puts the clients in three networks; "
        "a real database knows none of the lab's documentation addresses)",
    )
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run(args)


# ------------------------------------------------------------------ the parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="resetwatch",
        description="See which sampled TCP connections die early, and how.",
    )
    parser.add_argument("--version", action="version", version=f"resetwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_run(sub)
    _add_rules(sub)
    _add_replay(sub)
    _add_status(sub)
    assets.add_command(sub)
    _add_demo(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except UsageError as error:
        print(f"resetwatch {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
