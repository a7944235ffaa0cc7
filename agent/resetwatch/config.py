"""Settings of the live agent: one TOML file, every key overridable by a flag of the same name.

Bad values are refused at start (and on reload) with a `ConfigError` naming the key, the value
and what is allowed. `SETTINGS` is the single list of keys: the flags, the example config and
the docs are all generated from it.
"""

from __future__ import annotations

import ipaddress
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on RHEL 9's Python 3.9
    import tomli as tomllib

from .rules import BACKENDS
from .rules.spec import IFNAME, MIN_PROBABILITY, SAMPLERS

DEFAULT_CONFIG = Path("/etc/resetwatch/resetwatch.toml")
DEFAULT_PORT = 9824


class ConfigError(ValueError):
    """A setting was refused; the message is one line naming key, value and what is allowed."""


@dataclass(frozen=True)
class Setting:
    """One key: its default, how to check a value, and the help line shown everywhere."""

    key: str
    default: Any
    help: str
    check: Callable[[Any], Any]
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
        isinstance(n, str) and IFNAME.match(n) for n in value
    ):
        raise ValueError(
            "a list of interface names of 1 to 15 letters, digits or _.@:- with an optional "
            'trailing + as a wildcard, e.g. ["eth0", "ens+"]'
        )
    return tuple(value)


SETTINGS: tuple[Setting, ...] = (
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
    Setting("dports", (), "sample only connections to these local ports (empty: all)",
            _ports, "PORT"),
    Setting("interfaces", (), "sample only connections arriving on these interfaces (empty: all)",
            _names, "IFACE"),
    Setting("idle_timeout", 300.0, "seconds without a packet before a flow ends as a timeout",
            _number(0.0, 86400.0, low_open=True), "SECONDS"),
    Setting("close_linger", 10.0, "seconds to wait after the first RST or FIN before judging",
            _number(0.0, 3600.0), "SECONDS"),
    Setting("max_flows", 1_000_000, "flows held at once; beyond it the oldest are evicted",
            _integer(1, 100_000_000), "N"),
    Setting("listen", f"127.0.0.1:{DEFAULT_PORT}", "HTTP address for /metrics and /healthz",
            _listen, "ADDR:PORT"),
    Setting("records", "", "append one JSON line per judged flow to this file (opt-in; "
            "as a service, under /var/log/resetwatch/)",
            _path_or_empty, "PATH"),
    Setting("keep_rules", False, "leave the rules installed when the agent stops",
            _boolean),
    Setting("no_rules", False, "do not touch the rules (someone else manages them)",
            _boolean),
    Setting("rules_check_interval", 5.0, "seconds between checks that the rules are still there",
            _number(0.5, 3600.0), "SECONDS"),
    Setting("nflog_buffer_max", 64 << 20, "largest NFLOG receive buffer to grow to, in bytes",
            _integer(1 << 16, 1 << 30), "BYTES"),
    Setting("state_dir", "/var/lib/resetwatch",
            "directory for state kept across restarts (the 28-day history); empty: none",
            _path_or_empty, "DIR"),
)
BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}


@dataclass(frozen=True)
class Config:
    """The agent's settings after defaults, the file and flags were merged and checked."""

    probability: float = 0.0001
    nflog_group: int = 10
    label: int = 7
    backend: str = "auto"
    sampler: str = "conntrack"
    dports: tuple[int, ...] = ()
    interfaces: tuple[str, ...] = ()
    idle_timeout: float = 300.0
    close_linger: float = 10.0
    max_flows: int = 1_000_000
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    records: str = ""
    keep_rules: bool = False
    no_rules: bool = False
    rules_check_interval: float = 5.0
    nflog_buffer_max: int = 64 << 20
    state_dir: str = "/var/lib/resetwatch"
    source: str = field(default="defaults", compare=False)
    """Where the settings came from, for messages."""

    @property
    def listen_address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


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


assert [f.name for f in fields(Config) if f.name != "source"] == [s.key for s in SETTINGS]
assert all(getattr(Config(), s.key) == s.default for s in SETTINGS)
