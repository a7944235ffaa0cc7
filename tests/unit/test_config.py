"""Config: defaults, file, flags, and one-line errors naming key, value and what is allowed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from resetwatch.config import SETTINGS, Config, ConfigError, example_toml, load
from resetwatch.rules.spec import RuleSpec

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "resetwatch.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    assert load(None) == Config()


def test_file_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, "probability = 0.5\nmax_flows = 10\ndports = [443]\n")
    config = load(path, {"max_flows": 20, "probability": None})
    assert (config.probability, config.max_flows, config.dports) == (0.5, 20, (443,))


BAD = [
    ("probability = 2", "probability = 2 is not allowed: must be a number at least 4.65661e-10"),
    ("probability = 0", "probability = 0 is not allowed"),
    ("probability = 1e-12", "probability = 1e-12 is not allowed: must be a number at least"),
    ('interfaces = ["eth 0"]', "interfaces = ['eth 0'] is not allowed: must be a list"),
    ('interfaces = ["eth*"]', "interfaces = ['eth*'] is not allowed: must be a list"),
    ('interfaces = ["eth0\\n"]', "interfaces = ['eth0\\n'] is not allowed: must be a list"),
    ("records_keep = 0", "records_keep = 0 is not allowed: must be a whole number from 1"),
    ("records_max_bytes = -1", "records_max_bytes = -1 is not allowed: must be a whole number"),
    ("nflog_buffer_max = 1024", "nflog_buffer_max = 1024 is not allowed: must be a whole number"),
    ('probability = "x"', "probability = 'x' is not allowed: must be a number"),
    ("label = 128", "label = 128 is not allowed: must be a whole number from 0 to 127"),
    ('backend = "pf"', "backend = 'pf' is not allowed: must be one of auto, iptables, "),
    ('listen = "localhost"', "listen = 'localhost' is not allowed: must be ADDRESS:PORT"),
    ("dports = [0]", "dports = [0] is not allowed: must be a list of port"),
    ("keep_rules = 1", "keep_rules = 1 is not allowed: must be true or false"),
    ("colour = 1", "unknown key 'colour'"),
    ("idle_timeout = 5\nclose_linger = 5", "close_linger = 5 is not allowed: must be less"),
    ("probability = ", "not valid TOML"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[b[0] for b in BAD])
def test_bad_config_names_key_value_and_allowed(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load(tmp_path / "nope.toml")


def test_flag_errors_name_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--max-flows: max_flows = 0 is not allowed"):
        load(None, {"max_flows": 0})


def test_example_config_is_valid_toml_listing_every_key(tmp_path: Path) -> None:
    text = example_toml()
    uncommented = "\n".join(line[2:] for line in text.splitlines() if " = " in line)
    data = tomllib.loads(uncommented)
    assert list(data) == [s.key for s in SETTINGS]
    assert load(write(tmp_path, uncommented)) == Config()


def test_config_fields_are_the_settings_with_their_defaults() -> None:
    config = Config()
    assert all(getattr(config, s.key) == s.default for s in SETTINGS)
    assert all(type(getattr(config, s.key)) is type(s.check(s.default)) for s in SETTINGS)


@pytest.mark.parametrize("name", ["eth0\n", "eth0\nx", "\neth0", "eth0 ", ""])
def test_an_interface_name_with_a_newline_is_refused_everywhere(name: str) -> None:
    with pytest.raises(ConfigError):
        load(None, {"interfaces": [name]})
    with pytest.raises(ValueError, match="in_interfaces"):
        RuleSpec(in_interfaces=(name,))
