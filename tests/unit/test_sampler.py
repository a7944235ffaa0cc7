"""The sampler setting without a kernel: config, the refusal on iptables, the dry run, the hint
about an empty conntrack table, and the set-full metric across re-installs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from resetwatch.config import ConfigError, load
from resetwatch.rules import NftBackend, RulesError, RuleSpec, backend_for
from resetwatch.rules.tracking import untracked_hint
from tests.unit.test_cli import resetwatch


def test_sampler_defaults_to_conntrack_and_accepts_stateless() -> None:
    assert load(None).sampler == "conntrack"
    assert load(None, {"sampler": "stateless", "backend": "nft"}).sampler == "stateless"
    with pytest.raises(ConfigError, match="sampler = 'hash' is not allowed"):
        load(None, {"sampler": "hash"})
    with pytest.raises(ValueError, match="sampler: 'hash' is not allowed"):
        RuleSpec(sampler="hash")


def test_iptables_refuses_stateless_with_one_line_naming_the_nft_backend() -> None:
    with pytest.raises(ConfigError, match="--backend nft"):
        load(None, {"sampler": "stateless", "backend": "iptables"})
    with pytest.raises(RulesError, match="--backend nft"):
        backend_for("iptables-legacy").install(RuleSpec(sampler="stateless"))
    result = resetwatch("rules", "check", "--config", "/dev/null", "--backend", "iptables",
                        "--sampler", "stateless")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--backend nft" in result.stderr


def test_dry_run_shows_the_stateless_rules() -> None:
    result = resetwatch("rules", "install", "--dry-run", "--config", "/dev/null",
                        "--backend", "nft", "--sampler", "stateless")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "jhash ip saddr . tcp sport . ip daddr . tcp dport mod 10000 seed 0x" in result.stdout
    assert "set sampled6 {" in result.stdout and " ct " not in result.stdout


def test_the_seed_is_random_and_kept_by_one_backend() -> None:
    backend = NftBackend()
    first = backend.render(RuleSpec(sampler="stateless"))
    assert backend.render(RuleSpec(sampler="stateless")) == first
    assert NftBackend().render(RuleSpec(sampler="stateless")) != first


@pytest.mark.parametrize(
    "content,sampler,says",
    [("0\n", "conntrack", True), (None, "conntrack", True), ("12\n", "conntrack", False),
     ("0\n", "stateless", False), ("garbage", "conntrack", False)],
)  # fmt: skip
def test_untracked_hint(tmp_path: Path, content: Optional[str], sampler: str, says: bool) -> None:
    path = tmp_path / "nf_conntrack_count"
    if content is not None:
        path.write_text(content)
    hint = untracked_hint(sampler, path)
    assert (hint is not None) == says
    if hint:
        assert "--sampler stateless" in hint and "\n" not in hint


class CountingRules:
    """Stateless rules whose set-full counter the test sets; an install zeroes it, as the
    kernel does when the table is replaced."""

    name = "nft"

    def __init__(self) -> None:
        self.full = 0
        self.broken = False

    def install(self, spec: RuleSpec) -> None:
        self.full = 0
        self.broken = False

    def label_users(self, spec: RuleSpec) -> list[str]:
        return []

    def candidates(self) -> Optional[int]:
        return None

    def remove(self) -> None:
        pass

    def check(self, spec: RuleSpec) -> list[str]:
        return ["rule 1 is missing"] if self.broken else []

    def set_full(self) -> Optional[int]:
        return self.full


def test_the_set_full_metric_adds_up_across_repairs() -> None:
    from resetwatch.config import Config
    from resetwatch.daemon import Agent
    from tests.unit.test_reload import NoTraffic

    rules = CountingRules()
    config = Config(listen="127.0.0.1:0", state_dir="", backend="nft", sampler="stateless")
    agent = Agent(config, open_source=lambda c, k: NoTraffic(),
                  rules_backend=lambda name: rules)  # type: ignore[arg-type,return-value]  # fmt: skip
    agent.start()
    try:
        rules.full = 3
        agent.keeper.check()
        assert agent.health.rules.set_full == 3
        rules.full, rules.broken = 5, True  # counted 5, then the rules were damaged: repaired
        agent.keeper.check()
        assert agent.health.rules.repairs == 1 and rules.full == 0
        rules.full = 2
        agent.keeper.check()
        assert agent.health.rules.set_full == 7
        text = agent.registry.get_sample_value("resetwatch_sampler_set_full_total")
        assert text == 7
    finally:
        agent.stop()
