"""The demo's client networks: the lab's client addresses carved into three made-up networks,
one of which sits behind the tampering middlebox.

`lab.mmdb` (beside this file, in IPinfo Lite's flat layout: `asn`, `as_name`, `country_code`,
`country`, `continent_code`) maps the ranges below to their networks; the agent reads it with
`--ipdb` like a real database. It is generated, and committed, so the demo needs no writer:

    python -m resetwatch.demo.networks agent/resetwatch/demo/lab.mmdb   # needs mmdb-writer

AS numbers are from the private range (64512-65534) and the addresses are documentation
prefixes, so nothing here names a real network.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Optional

BUILD_EPOCH = 1_764_547_200
"""2025-12-01T00:00:00Z: a fixed build date, so the generated file is the same every time."""
DATABASE = Path(__file__).with_name("lab.mmdb")


class LabNetwork(NamedTuple):
    asn: int
    as_name: str
    country: str
    country_name: str
    continent: str
    prefixes: tuple[str, ...]

    def holds(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return any(ip in ipaddress.ip_network(p) for p in self.prefixes)


NETWORKS = (
    LabNetwork(64512, "Demo Mobile", "DE", "Germany", "EU",
               ("198.51.100.0/28", "2001:db8:c::10/126")),
    LabNetwork(64513, "Demo Fibre", "JP", "Japan", "AS",
               ("198.51.100.16/29", "2001:db8:c::14/127")),
    LabNetwork(64514, "Demo Campus", "NZ", "New Zealand", "OC",
               ("198.51.100.24/29", "2001:db8:c::16/127")),
)
"""Client addresses (lab.CLIENTS4, CLIENTS6) fall in these; the spoofed source in none."""
TAMPERED = NETWORKS[0]
"""The network whose path runs through the tampering middlebox."""


def members(network: LabNetwork, addresses: Sequence[str]) -> list[str]:
    return [a for a in addresses if network.holds(a)]


def write(path: Path) -> None:
    """Write the database of NETWORKS to `path` (mmdb-writer, a test dependency)."""
    from mmdb_writer import MMDBWriter  # type: ignore[import-not-found,import-untyped,unused-ignore]
    from netaddr import IPSet  # type: ignore[import-not-found,import-untyped,unused-ignore]

    class Writer(MMDBWriter):  # type: ignore[misc,unused-ignore]
        def _build_meta(self) -> dict[str, object]:
            meta: dict[str, object] = super()._build_meta()
            meta["build_epoch"] = BUILD_EPOCH
            return meta

    writer = Writer(ip_version=6, ipv4_compatible=True, database_type="ipinfo lite.mmdb",
                    languages=["en"], description="resetwatch demo: lab client networks")
    for network in NETWORKS:
        record = {"asn": f"AS{network.asn}", "as_name": network.as_name,
                  "country_code": network.country, "country": network.country_name,
                  "continent_code": network.continent}
        writer.insert_network(IPSet(list(network.prefixes)), record)
    writer.to_db_file(str(path))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m resetwatch.demo.networks PATH.mmdb", file=sys.stderr)
        return 2
    write(Path(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
