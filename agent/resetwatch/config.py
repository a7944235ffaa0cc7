"""Settings of the live agent: one TOML file, every key overridable by a flag of the same name.

Bad values are refused at start (and on reload) with a `ConfigError` naming the key, the value
and what is allowed. `SETTINGS` is the single list of keys, each with its type (the type its
check returns), default and help: `Config`'s fields, the flags, the example config and the docs
are all derived from it (an import-time check keeps `Config` in step with it).
"""

from __future__ import annotations

import ipaddress
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Generic, Optional, TypeVar, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on RHEL 9's Python 3.9
    import tomli as tomllib

from .rules import BACKENDS
from .rules.spec import IFNAME, MIN_PROBABILITY, SAMPLERS, RuleSpec

T = TypeVar("T")

DEFAULT_CONFIG = Path("/etc/resetwatch/resetwatch.toml")
DEFAULT_PORT = 9824


class ConfigError(ValueError):
    """A setting was refused; the message is one line naming key, value and what is allowed."""


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One key: its default, how to check a value (the check returns the value in the key's
    type), and the help line shown everywhere (flags, example config, README)."""

    key: str
    default: T
    help: str
    check: Callable[[Any], T]
    metavar: str = ""


def _number(low: float, high: float, *, low_open: bool = False, what: str = "") -> Any:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"a number{what}")
        number = float(value)
        ok = math.isfinite(number) and number <= high
        ok = ok and (number > low if low_open else number >= low)
        if not ok:
            bound = f"greater than {low:g}" if low_open else f"at least {low:g}"
            raise ValueError(f"a number {bound} and at most {high:g}{what}")
        return number

    return check


def _integer(low: int, high: int) -> Any:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"a whole number from {low} to {high}")
        return value

    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _choice(*allowed: str) -> Any:
    def check(value: Any) -> str:
        if value not in allowed:
            raise ValueError("one of " + ", ".join(allowed))
        return str(value)

    return check


def _path_or_empty(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a file path (or empty to disable)")
    return value


def _listen(value: Any) -> str:
    if not isinstance(value, str) or ":" not in value:
        raise ValueError("ADDRESS:PORT, e.g. 127.0.0.1:9824 or [::1]:9824")
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise ValueError("ADDRESS:PORT with a numeric address, e.g. 127.0.0.1:9824") from None
    if not 0 <= number <= 65535:
        raise ValueError("ADDRESS:PORT with a port from 0 to 65535")
    return value


def _ports(value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in value
    ):
        raise ValueError("a list of port numbers from 1 to 65535, e.g. [443, 80]")
    return tuple(value)


def _names(value: Any) -> tuple[str, ...]:
    # The rules' own test of a name (rules/spec.py), so a reload can never pass a name here
    # that installing the rules then refuses.
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(n, str) and IFNAME.fullmatch(n) for n in value
    ):
        raise ValueError(
            "a list of interface names of 1 to 15 letters, digits or _.@:- with an optional "
            'trailing + as a wildcard, e.g. ["eth0", "ens+"]'
        )
    return tuple(value)


def _paths(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) and p for p in value):
        raise ValueError('a list of file paths, e.g. ["/var/lib/GeoIP/GeoLite2-ASN.mmdb"]')
    return tuple(value)


SETTINGS: tuple[Setting[Any], ...] = (
    Setting("probability", 0.0001, "share of new ingress TCP connections sampled",
            _number(MIN_PROBABILITY, 1.0, what=" (the kernel samples in steps of 1/2^31)"), "P"),
    Setting("nflog_group", 10, "NFLOG group the sampled packets are logged to",
            _integer(0, 65535), "N"),
    Setting("label", 7, "conntrack label bit that marks a sampled connection",
            _integer(0, 127), "BIT"),
    Setting("backend", "auto", "how the rules are programmed: " + ", ".join(BACKENDS),
            _choice(*BACKENDS), "NAME"),
    Setting("sampler", "conntrack", "how connections are sampled: conntrack (a label, the "
            "published rules) or stateless (a keyed hash, no conntrack; nft backend only)",
            _choice(*SAMPLERS), "NAME"),
    Setting("dports", (), "sample only connections to these local ports (empty: every port)",
            _ports, "PORT"),
    Setting("interfaces", (), "sample only connections arriving on these interfaces "
            "(empty: every interface)",
            _names, "IFACE"),
    Setting("idle_timeout", 300.0, "seconds without a packet before a flow ends as a timeout",
            _number(0.0, 86400.0, low_open=True), "SECONDS"),
    Setting("close_linger", 10.0, "seconds to wait after the first RST or FIN before judging",
            _number(0.0, 3600.0), "SECONDS"),
    Setting("max_flows", 1_000_000, "flows held at once; beyond it the oldest are evicted",
            _integer(1, 100_000_000), "N"),
    Setting("listen", f"127.0.0.1:{DEFAULT_PORT}", "HTTP address of /metrics, /healthz and the "
            "local API (/api/...)",
            _listen, "ADDR:PORT"),
    Setting("http_max_connections", 64, "HTTP connections open at once; beyond it idle ones are "
            "closed or new ones refused (503)", _integer(1, 1024), "N"),
    Setting("records", "", "append one JSON line per judged flow to this file (opt-in; "
            "as a service, under /var/log/resetwatch/); empty: no records",
            _path_or_empty, "PATH"),
    Setting("records_max_bytes", 100 << 20, "rotate the records file when it reaches this size "
            "(to PATH.1, PATH.2, ...); 0: never (logrotate's job)",
            _integer(0, 1 << 50), "BYTES"),
    Setting("records_keep", 5, "rotated records files kept beside the current one",
            _integer(1, 1000), "N"),
    Setting("keep_rules", False, "leave the rules installed when the agent stops",
            _boolean),
    Setting("no_rules", False, "do not touch the rules (someone else manages them)",
            _boolean),
    Setting("rules_check_interval", 5.0, "seconds between checks that the rules are still there",
            _number(0.5, 3600.0), "SECONDS"),
    Setting("nflog_buffer_max", 64 << 20, "largest NFLOG receive buffer to grow to, in bytes "
            "(applied on reload)",
            _integer(1 << 16, 1 << 30), "BYTES"),
    Setting("state_dir", "/var/lib/resetwatch",
            "directory for state kept across restarts (the history); empty: none",
            _path_or_empty, "DIR"),
    Setting("retention_days", 28, "days of 15-minute history kept for the local API "
            "(memory and disk per day: docs/operations.md)",
            _integer(1, 366), "DAYS"),
    Setting("ipdb", (), "MaxMind DB files naming each client's network (an ASN file and a "
            "country file, or one with both: GeoLite2, DB-IP Lite, IPinfo Lite; needs the geo "
            "extra); empty: no networks",
            _paths, "PATH"),
    Setting("network_top", 50, "networks and countries with a series of their own in the "
            "metrics and the history the API filters (the busiest; the rest count as other)",
            _integer(1, 1000), "N"),
)
BY_KEY: dict[str, Setting[Any]] = {s.key: s for s in SETTINGS}


def _default(key: str) -> Any:
    return BY_KEY[key].default


@dataclass(frozen=True)
class Config:
    """The agent's settings after defaults, the file and flags were merged and checked.

    One field per entry of `SETTINGS`, in its order, defaults taken from it: a key is added
    there and here (with its type), and `_check_config_fields` refuses any drift at import."""

    probability: float = _default("probability")
    nflog_group: int = _default("nflog_group")
    label: int = _default("label")
    backend: str = _default("backend")
    sampler: str = _default("sampler")
    dports: tuple[int, ...] = _default("dports")
    interfaces: tuple[str, ...] = _default("interfaces")
    idle_timeout: float = _default("idle_timeout")
    close_linger: float = _default("close_linger")
    max_flows: int = _default("max_flows")
    listen: str = _default("listen")
    http_max_connections: int = _default("http_max_connections")
    records: str = _default("records")
    records_max_bytes: int = _default("records_max_bytes")
    records_keep: int = _default("records_keep")
    keep_rules: bool = _default("keep_rules")
    no_rules: bool = _default("no_rules")
    rules_check_interval: float = _default("rules_check_interval")
    nflog_buffer_max: int = _default("nflog_buffer_max")
    state_dir: str = _default("state_dir")
    retention_days: int = _default("retention_days")
    ipdb: tuple[str, ...] = _default("ipdb")
    network_top: int = _default("network_top")
    source: str = field(default="defaults", compare=False)
    """Where the settings came from, for messages."""

    @property
    def listen_address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


def _check_config_fields() -> None:
    """`Config` has exactly the keys of `SETTINGS`, in order, each typed as its default."""
    hints = get_type_hints(Config)
    names = [f.name for f in fields(Config) if f.name != "source"]
    if names != [s.key for s in SETTINGS]:
        raise AssertionError(f"Config fields {names} differ from SETTINGS")
    for setting in SETTINGS:
        hint = hints[setting.key]
        kind = getattr(hint, "__origin__", hint)
        if not isinstance(setting.default, kind) or (kind is float) != isinstance(
            setting.check(setting.default), float
        ):
            raise AssertionError(f"Config.{setting.key}: {hint} does not fit its default")


_check_config_fields()


def rule_spec(config: Config) -> RuleSpec:
    """The sampling rules a config asks for (`resetwatch rules` and the agent alike)."""
    return RuleSpec(
        probability=config.probability,
        label=config.label,
        nflog_group=config.nflog_group,
        dports=config.dports,
        in_interfaces=config.interfaces,
        sampler=config.sampler,
    )


def _checked(key: str, value: Any, where: str) -> Any:
    setting = BY_KEY.get(key)
    if setting is None:
        known = ", ".join(sorted(BY_KEY))
        raise ConfigError(f"{where}: unknown key {key!r} (known keys: {known})")
    try:
        return setting.check(value)
    except ValueError as error:
        raise ConfigError(f"{where}: {key} = {value!r} is not allowed: must be {error}") from None


def load(path: Optional[Path], overrides: Mapping[str, Any] = {}) -> Config:
    """Defaults, then the TOML file at `path` (if given), then `overrides` (from flags).

    A missing file is an error only when `path` was named explicitly (`explicit` callers pass
    it); the default path may be absent.
    """
    values: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except OSError as error:
            raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from None
        for key, value in data.items():
            values[key] = _checked(key, value, str(path))
        source = str(path)
    for key, value in overrides.items():
        if value is not None:
            values[key] = _checked(key, value, "--" + key.replace("_", "-"))
    config = replace(Config(), source=source, **values)
    if config.close_linger >= config.idle_timeout:
        raise ConfigError(
            f"{source}: close_linger = {config.close_linger:g} is not allowed: must be less "
            f"than idle_timeout ({config.idle_timeout:g})"
        )
    if config.sampler == "stateless" and config.backend.startswith("iptables"):
        raise ConfigError(
            f"{source}: sampler = 'stateless' needs the nft backend: use --backend nft "
            "(iptables samples only with conntrack)"
        )
    if config.keep_rules and config.no_rules:
        raise ConfigError(f"{source}: keep_rules and no_rules cannot both be true")
    return config


def example_toml() -> str:
    """A fully commented config file with every key at its default (deploy/ ships it)."""
    lines = [
        "# resetwatch configuration. Every key can also be given as a flag of `resetwatch run`",
        "# (--key-name); flags win over this file. Send SIGHUP to reload.",
        "",
    ]
    for setting in SETTINGS:
        lines.append(f"# {setting.help}")
        lines.append(f"# {setting.key} = {_toml_value(setting.default)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)

