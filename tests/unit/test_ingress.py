"""`replay --server`: which packets count as ingress."""

from __future__ import annotations

import pytest

from resetwatch.packet import make_key
from resetwatch.replay import ingress_filter

SERVERS = ["10.201.1.0/24", "2001:db8::/32", "203.0.113.5", "2001:db8:ffff::1/128"]
CASES = [
    ("to a v4 network", ("192.0.2.1", 1, "10.201.1.9", 80), True),
    ("outside the v4 network", ("192.0.2.1", 1, "10.201.2.9", 80), False),
    ("from the v4 network (egress)", ("10.201.1.9", 80, "192.0.2.1", 1), False),
    ("to a v4 address", ("192.0.2.1", 1, "203.0.113.5", 443), True),
    ("to a v6 network", ("2001:db9::1", 1, "2001:db8::5", 80), True),
    ("outside the v6 network", ("2001:db9::1", 1, "2001:db9::5", 80), False),
    ("from the v6 network (egress)", ("2001:db8::5", 80, "2001:db9::1", 1), False),
    ("to a v6 address", ("2001:db9::1", 1, "2001:db8:ffff::1", 80), True),
]


@pytest.mark.parametrize("key,ingress", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_ingress_is_traffic_to_the_servers(key: tuple[str, int, str, int], ingress: bool) -> None:
    is_ingress = ingress_filter(SERVERS)
    assert is_ingress is not None
    assert is_ingress(make_key(*key)) is ingress


def test_no_server_means_everything_is_ingress() -> None:
    assert ingress_filter([]) is None
