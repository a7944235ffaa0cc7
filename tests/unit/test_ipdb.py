"""The client-network lookup (resetwatch.ipdb) on real MaxMind DB files: MaxMind's GeoLite2 test
files (tests/fixtures/ipdb) and files in each free layout written here with mmdb-writer."""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("maxminddb")
mmdb_writer = pytest.importorskip("mmdb_writer")
from netaddr import IPSet  # noqa: E402  (comes with mmdb-writer)

from resetwatch.ipdb import (  # noqa: E402
    NO_NETWORK,
    Ipdb,
    IpdbError,
    Network,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ipdb"
GEOLITE_ASN = str(FIXTURES / "GeoLite2-ASN-Test.mmdb")
GEOLITE_COUNTRY = str(FIXTURES / "GeoLite2-Country-Test.mmdb")
GEOLITE_CITY = str(FIXTURES / "GeoLite2-City-Test.mmdb")

EPOCH = 1795824000  # 2026-11-28 00:00 UTC


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


class _Writer(mmdb_writer.MMDBWriter):  # type: ignore[misc]
    """mmdb-writer stamps the current time; tests want a known build date."""

    def __init__(self, build_epoch: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.build_epoch = build_epoch

    def _build_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = super()._build_meta()
        meta["build_epoch"] = self.build_epoch
        return meta


def write_db(
    path: Path,
    database_type: str,
    networks: dict[str, Any],
    ip_version: int = 6,
    build_epoch: int = EPOCH,
) -> str:
    writer = _Writer(
        build_epoch,
        ip_version=ip_version,
        database_type=database_type,
        ipv4_compatible=ip_version == 6,
        languages=["en"],
        description="resetwatch test database",
    )
    for cidr, record in networks.items():
        writer.insert_network(IPSet([cidr]), record)
    writer.to_db_file(str(path))
    return str(path)


def replace(path: str, write: Any) -> None:
    """Write a new file next to `path` and rename it over `path`, as updaters do."""
    tmp = Path(path + ".new")
    write(tmp)
    os.replace(tmp, path)


# --- layouts ------------------------------------------------------------------------------


def dbip_asn(path: Path, asn: int = 64500, **kw: Any) -> str:
    return write_db(path, "DBIP-ASN-Lite (compat=GeoLite2-ASN)", {
        "192.0.2.0/24": {"autonomous_system_number": asn,
                         "autonomous_system_organization": "Lab Net A"},
        "198.51.100.0/25": {"autonomous_system_number": 4200000001,
                            "autonomous_system_organization": "Lab Net B (32-bit ASN)"},
        "2001:db8:a::/48": {"autonomous_system_number": asn,
                            "autonomous_system_organization": "Lab Net A"},
    }, **kw)


def dbip_country(path: Path) -> str:
    return write_db(path, "DBIP-Country-Lite", {
        "192.0.2.0/24": {
            "continent": {"code": "EU", "geoname_id": 6255148, "names": {"en": "Europe"}},
            "country": {"iso_code": "DE", "geoname_id": 2921044, "is_in_european_union": True,
                        "names": {"en": "Germany"}},
        },
        "203.0.113.0/24": {
            "continent": {"code": "OC", "geoname_id": 6255151, "names": {"en": "Oceania"}},
            "country": {"iso_code": "nz", "names": {"en": "New Zealand"}},  # lower case
        },
        "2001:db8:b::/48": {
            "continent": {"code": "AS", "geoname_id": 6255147, "names": {"en": "Asia"}},
            "country": {"iso_code": "JP", "names": {"en": "Japan"}},
        },
    })


def ipinfo_lite(path: Path, database_type: str = "ipinfo lite.mmdb") -> str:
    return write_db(path, database_type, {
        "192.0.2.0/24": {"asn": "AS174", "as_name": "Cogent Communications",
                         "as_domain": "cogentco.com", "country_code": "CA", "country": "Canada",
                         "continent_code": "NA", "continent": "North America"},
        "2001:db8:c::/48": {"asn": "AS2519", "as_name": "ARTERIA Networks Corporation",
                            "as_domain": "arteria-net.com", "country_code": "JP",
                            "country": "Japan", "continent_code": "AS", "continent": "Asia"},
        # An address range IPinfo knows the country of but no AS for.
        "203.0.113.0/24": {"country_code": "AU", "country": "Australia",
                           "continent_code": "OC", "continent": "Oceania"},
    })


def test_geolite2_test_files_ipv4_and_ipv6() -> None:
    db = Ipdb([GEOLITE_ASN, GEOLITE_COUNTRY])
    assert db.describe() == [
        "GeoLite2-ASN-Test.mmdb: asn, as_name (GeoLite2-ASN, built 2026-02-04)",
        "GeoLite2-Country-Test.mmdb: country, continent, country_name (GeoLite2-Country, "
        "built 2026-02-04)",
    ]
    assert db.fields == ("asn", "as_name", "country", "continent", "country_name")
    assert db.lookup(packed("89.160.20.113")) == Network(
        29518, "Bredband2 AB", "SE", "EU", "Sweden")
    # The ASN file has a number but no organization here.
    assert db.lookup(packed("216.160.83.57")) == Network(209, None, "US", "NA", "United States")
    # Only one of the two files knows these.
    assert db.lookup(packed("1.128.0.1")) == Network(1221, "Telstra Pty Ltd", None, None)
    assert db.lookup(packed("2.125.160.216")) == Network(None, None, "GB", "EU", "United Kingdom")
    assert db.lookup(packed("2001:218::1")) == Network(None, None, "JP", "AS", "Japan")
    assert db.lookup(packed("2001:1700::1")) == Network(
        6730, "Sunrise Communications AG", None, None)
    assert db.lookup(packed("1.1.1.1")) is NO_NETWORK
    assert db.lookup(packed("2001:db8::1")) is NO_NETWORK
    assert (db.lookups, db.hits, db.misses) == (8, 6, 2)
    assert [(f.database_type, f.build_epoch, f.ip_version) for f in db.files] == [
        ("GeoLite2-ASN", 1770245369, 6), ("GeoLite2-Country", 1770245369, 6)]
    db.close()


def test_geolite2_city_answers_country_and_continent() -> None:
    db = Ipdb([GEOLITE_CITY])
    assert db.describe() == [
        "GeoLite2-City-Test.mmdb: country, continent, country_name (GeoLite2-City, "
        "built 2026-02-04)"]
    assert db.lookup(packed("81.2.69.160")) == Network(None, None, "GB", "EU", "United Kingdom")
    assert db.lookup(packed("2001:218::1")).country == "JP"


def test_dbip_lite_asn_and_country(tmp_path: Path) -> None:
    db = Ipdb([dbip_asn(tmp_path / "dbip-asn-lite.mmdb"),
               dbip_country(tmp_path / "dbip-country-lite.mmdb")])
    assert db.describe() == [
        "dbip-asn-lite.mmdb: asn, as_name (DBIP-ASN-Lite (compat=GeoLite2-ASN), built 2026-11-28)",
        "dbip-country-lite.mmdb: country, continent, country_name (DBIP-Country-Lite, "
        "built 2026-11-28)",
    ]
    assert db.lookup(packed("192.0.2.77")) == Network(64500, "Lab Net A", "DE", "EU", "Germany")
    assert db.lookup(packed("198.51.100.1")) == Network(
        4200000001, "Lab Net B (32-bit ASN)", None, None)
    assert db.lookup(packed("198.51.100.200")) is NO_NETWORK  # outside the /25
    assert db.lookup(packed("203.0.113.9")) == Network(None, None, "NZ", "OC", "New Zealand")
    assert db.lookup(packed("2001:db8:a:1::5")) == Network(64500, "Lab Net A", None, None)
    assert db.lookup(packed("2001:db8:b::1")) == Network(None, None, "JP", "AS", "Japan")
    assert db.lookup(packed("2001:db8:d::1")) is NO_NETWORK


@pytest.mark.parametrize("database_type", ["ipinfo lite.mmdb", ""])
def test_ipinfo_lite_flat_layout_found_by_its_keys(tmp_path: Path, database_type: str) -> None:
    db = Ipdb([ipinfo_lite(tmp_path / "ipinfo_lite.mmdb", database_type)])
    kind = database_type or "untyped"
    assert db.describe() == [
        f"ipinfo_lite.mmdb: asn, as_name, country, continent, country_name ({kind}, "
        "built 2026-11-28)"]
    assert db.lookup(packed("192.0.2.1")) == Network(
        174, "Cogent Communications", "CA", "NA", "Canada")
    assert db.lookup(packed("2001:db8:c:ffff::1")) == Network(
        2519, "ARTERIA Networks Corporation", "JP", "AS", "Japan")
    assert db.lookup(packed("203.0.113.1")) == Network(None, None, "AU", "OC", "Australia")
    assert db.lookup(packed("10.0.0.1")) is NO_NETWORK


def test_ipinfo_country_asn_layout_has_codes_in_country(tmp_path: Path) -> None:
    # IPinfo's earlier free file: `country` and `continent` hold the codes themselves.
    path = write_db(tmp_path / "country_asn.mmdb", "ipinfo country_asn.mmdb", {
        "192.0.2.0/24": {"country": "jp", "country_name": "Japan", "continent": "AS",
                         "continent_name": "Asia", "asn": "as2519", "as_name": "ARTERIA",
                         "as_domain": "arteria-net.com"},
    })
    assert Ipdb([path]).lookup(packed("192.0.2.1")) == Network(2519, "ARTERIA", "JP", "AS", "Japan")


def test_bad_values_are_no_answer_not_labels(tmp_path: Path) -> None:
    path = write_db(tmp_path / "odd.mmdb", "odd", {
        "192.0.2.0/24": {"asn": "ASX", "as_name": "  ", "country_code": "Germany",
                         "continent_code": "E1"},
        "198.51.100.0/24": {"asn": 174, "as_name": " Cogent ", "country_code": "de"},
    })
    db = Ipdb([path])
    assert db.lookup(packed("192.0.2.1")) is NO_NETWORK
    assert db.lookup(packed("198.51.100.1")) == Network(174, "Cogent", "DE", None)


def test_ipv4_only_file_answers_no_ipv6(tmp_path: Path) -> None:
    path = dbip_country(tmp_path / "c6.mmdb")
    v4 = write_db(tmp_path / "asn4.mmdb", "GeoLite2-ASN", {
        "192.0.2.0/24": {"autonomous_system_number": 65001},
    }, ip_version=4)
    db = Ipdb([v4, path])
    assert db.lookup(packed("192.0.2.1")) == Network(65001, None, "DE", "EU", "Germany")
    assert db.lookup(packed("2001:db8:b::1")) == Network(None, None, "JP", "AS", "Japan")
    assert db.lookup(packed("2001:db8:a::1")) is NO_NETWORK


def test_first_file_answering_a_field_wins_and_later_files_are_skipped(tmp_path: Path) -> None:
    both = ipinfo_lite(tmp_path / "ipinfo.mmdb")
    asn = dbip_asn(tmp_path / "dbip-asn.mmdb")
    country = dbip_country(tmp_path / "dbip-country.mmdb")
    db = Ipdb([both, asn, country])
    # IPinfo answers every field for 192.0.2.0/24: the DB-IP files are not asked.
    assert db.lookup(packed("192.0.2.1")) == Network(
        174, "Cogent Communications", "CA", "NA", "Canada")
    assert db.db_lookups == 1
    # IPinfo has no AS for 203.0.113.0/24: the DB-IP ASN file is asked (and has none), the
    # country file is not (IPinfo answered both of its fields).
    assert db.lookup(packed("203.0.113.1")) == Network(None, None, "AU", "OC", "Australia")
    assert db.db_lookups == 3
    assert Ipdb([country, both]).lookup(packed("192.0.2.1")) == Network(
        174, "Cogent Communications", "DE", "EU", "Germany")


# --- files that cannot be used ------------------------------------------------------------


def _one_line_naming(error: pytest.ExceptionInfo[IpdbError], path: str) -> str:
    message = str(error.value)
    assert "\n" not in message
    assert path in message
    return message


def test_not_a_maxmind_db_file(tmp_path: Path) -> None:
    path = tmp_path / "GeoLite2-ASN.mmdb"
    path.write_text("this is not a database\n" * 100)
    with pytest.raises(IpdbError) as error:
        Ipdb([str(path)])
    assert "not a usable MaxMind DB file" in _one_line_naming(error, str(path))


def test_empty_and_truncated_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mmdb"
    empty.write_bytes(b"")
    with pytest.raises(IpdbError) as error:
        Ipdb([str(empty)])
    _one_line_naming(error, str(empty))
    truncated = tmp_path / "truncated.mmdb"
    truncated.write_bytes(Path(GEOLITE_ASN).read_bytes()[:4000])  # the metadata is at the end
    with pytest.raises(IpdbError) as error:
        Ipdb([str(truncated)])
    _one_line_naming(error, str(truncated))


def test_corrupt_search_tree_is_refused(tmp_path: Path) -> None:
    data = bytearray(Path(GEOLITE_ASN).read_bytes())
    data[:3000] = b"\xff" * 3000  # the search tree: every record points past the data
    corrupt = tmp_path / "corrupt.mmdb"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(IpdbError) as error:
        Ipdb([str(corrupt)])
    assert "corrupt" in _one_line_naming(error, str(corrupt))


def test_file_answering_nothing_we_need(tmp_path: Path) -> None:
    path = write_db(tmp_path / "conn.mmdb", "GeoIP2-Connection-Type", {
        "192.0.2.0/24": {"connection_type": "Cable/DSL"}})
    with pytest.raises(IpdbError) as error:
        Ipdb([path])
    message = _one_line_naming(error, path)
    assert "GeoIP2-Connection-Type answers none of asn, as_name, country, continent" in message


def test_missing_file_and_no_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.mmdb")
    with pytest.raises(IpdbError) as error:
        Ipdb([path])
    assert "No such file" in _one_line_naming(error, path)
    with pytest.raises(IpdbError, match="no database file"):
        Ipdb([])


def test_without_the_geo_extra_the_message_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "maxminddb", None)  # import maxminddb raises ImportError
    with pytest.raises(IpdbError) as error:
        Ipdb([GEOLITE_ASN])
    message = str(error.value)
    assert "\n" not in message
    assert "maxminddb" in message
    assert "pip install '.[geo]' from a checkout" in message


def test_lookup_rejects_what_is_not_an_address() -> None:
    with pytest.raises(ValueError):
        Ipdb([GEOLITE_ASN]).lookup(b"\x01\x02\x03")


# --- the cache ----------------------------------------------------------------------------


def carved(prefix: str, new_prefix: int, first_asn: int) -> dict[str, Any]:
    """A network carved into subnets of length `new_prefix`, one ASN each."""
    subnets = ipaddress.ip_network(prefix).subnets(new_prefix=new_prefix)
    return {str(net): {"autonomous_system_number": first_asn + number}
            for number, net in enumerate(subnets)}


def test_a_flood_inside_one_network_costs_one_lookup_per_database_network(
    tmp_path: Path,
) -> None:
    networks = carved("10.20.0.0/16", 24, 100000)  # 256 ASNs
    networks.update(carved("2001:db8:77::/48", 56, 200000))
    db = Ipdb([write_db(tmp_path / "flood.mmdb", "GeoLite2-ASN", networks)])
    rng = random.Random(7)
    for _ in range(20000):
        address = bytes([10, 20, rng.randrange(256), rng.randrange(256)])
        assert db.lookup(address).asn == 100000 + address[2]
    assert db.db_lookups == 256
    assert db.cache_hits == 20000 - 256
    # Random IPv6 sources inside the /48: one lookup per /56.
    base = ipaddress.IPv6Address("2001:db8:77::").packed
    for _ in range(5000):
        address = base[:6] + bytes([rng.randrange(256)]) + rng.randbytes(9)
        assert db.lookup(address).asn == 200000 + address[6]
    assert db.db_lookups == 512
    # Misses are cached by their network too: a /16 with nothing in it.
    before = db.db_lookups
    for _ in range(2000):
        assert db.lookup(bytes([10, 21, rng.randrange(256), rng.randrange(256)])) is NO_NETWORK
    assert db.db_lookups - before <= 2
    assert db.misses == 2000


def test_a_flood_in_an_unmapped_range_gets_cached_after_other_traffic(tmp_path: Path) -> None:
    # Five prefix lengths busy first (more than the cache probes), then a flood of random
    # sources in a /16 the database has nothing for: its one miss network must become
    # probed, or every flood packet would cost a real lookup.
    networks: dict[str, Any] = {}
    for second, length in enumerate((20, 22, 24, 26, 28)):
        networks.update(carved(f"10.{second}.0.0/16", length, 1000 * (second + 1)))
    db = Ipdb([write_db(tmp_path / "lengths.mmdb", "GeoLite2-ASN", networks)])
    rng = random.Random(9)
    for _ in range(2000):
        db.lookup(bytes([10, rng.randrange(5), rng.randrange(256), rng.randrange(256)]))
    warm = db.db_lookups
    for number in range(6000):
        assert db.lookup(bytes([10, 99, rng.randrange(256), rng.randrange(256)])) is NO_NETWORK
        if number == 3000:
            half = db.db_lookups
    assert half - warm <= warm  # bounded by the weight of the earlier traffic
    assert db.db_lookups == half  # and then none at all


def test_two_files_cache_by_the_longer_prefix(tmp_path: Path) -> None:
    asn = write_db(tmp_path / "asn.mmdb", "GeoLite2-ASN", carved("10.20.0.0/16", 24, 100))
    country = write_db(tmp_path / "country.mmdb", "GeoLite2-Country", {
        "10.20.0.0/17": {"country": {"iso_code": "DE"}},
        "10.20.128.0/17": {"country": {"iso_code": "FR"}},
    })
    db = Ipdb([asn, country])
    rng = random.Random(3)
    for _ in range(5000):
        address = bytes([10, 20, rng.randrange(256), rng.randrange(256)])
        network = db.lookup(address)
        assert network.asn == 100 + address[2]
        assert network.country == ("DE" if address[2] < 128 else "FR")
    assert db.db_lookups == 2 * 256


def test_cache_is_bounded(tmp_path: Path) -> None:
    db = Ipdb([write_db(tmp_path / "many.mmdb", "GeoLite2-ASN", carved("10.0.0.0/14", 24, 1))],
              cache_size=200)
    rng = random.Random(11)
    for _ in range(20000):
        address = bytes([10, rng.randrange(4), rng.randrange(256), rng.randrange(256)])
        assert db.lookup(address).asn == 1 + (address[1] << 8) + address[2]
        assert db.cached <= 200
    assert db.cache_hits > 0


# --- reloads ------------------------------------------------------------------------------


class CountingStat:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, path: str) -> os.stat_result:
        self.calls += 1
        return os.stat(path)


def test_replaced_file_is_picked_up_by_maybe_reload(tmp_path: Path) -> None:
    path = dbip_asn(tmp_path / "asn.mmdb", asn=64500)
    stat = CountingStat()
    db = Ipdb([path], stat=stat)
    assert db.lookup(packed("192.0.2.1")).asn == 64500
    stat.calls = 0
    assert db.maybe_reload() is False
    assert stat.calls == 1  # nothing changed: one stat, no open
    replace(path, lambda tmp: dbip_asn(tmp, asn=64501, build_epoch=EPOCH + 86400))
    assert db.maybe_reload() is True
    assert db.lookup(packed("192.0.2.1")).asn == 64501  # the cache started again
    assert db.describe()[0].endswith("built 2026-11-29)")
    assert db.maybe_reload() is False
    assert db.reloads == 1


def test_rewritten_in_place_is_seen_too(tmp_path: Path) -> None:
    # Same inode, new size/mtime: cp over the file (not advised, but seen).
    path = dbip_asn(tmp_path / "asn.mmdb", asn=64500)
    db = Ipdb([path])
    other = ipinfo_lite(tmp_path / "other.mmdb")
    shutil.copyfile(other, path)
    assert db.maybe_reload() is True
    assert db.lookup(packed("192.0.2.1")).asn == 174


def test_corrupt_replacement_is_refused_logged_once_and_old_answers_stay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = dbip_asn(tmp_path / "asn.mmdb", asn=64500)
    db = Ipdb([path])
    replace(path, lambda tmp: tmp.write_bytes(Path(GEOLITE_ASN).read_bytes()[:5000]))
    with caplog.at_level(logging.ERROR, logger="resetwatch"):
        assert db.maybe_reload() is False
        assert db.maybe_reload() is False
        assert db.maybe_reload() is False
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert path in errors[0] and "keeping the loaded copy" in errors[0]
    assert db.reload_failures == 1
    assert db.lookup(packed("192.0.2.1")).asn == 64500
    # A file answering nothing is refused the same way.
    replace(path, lambda tmp: write_db(tmp, "GeoIP2-Domain", {"192.0.2.0/24": {"domain": "x"}}))
    assert db.maybe_reload() is False
    assert db.reload_failures == 2
    assert db.lookup(packed("192.0.2.1")).asn == 64500
    # The next good file is taken.
    replace(path, lambda tmp: dbip_asn(tmp, asn=64502))
    assert db.maybe_reload() is True
    assert db.lookup(packed("192.0.2.1")).asn == 64502


def test_deleted_file_keeps_the_loaded_copy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = dbip_asn(tmp_path / "asn.mmdb", asn=64500)
    db = Ipdb([path])
    os.unlink(path)
    with caplog.at_level(logging.ERROR, logger="resetwatch"):
        assert db.maybe_reload() is False
        assert db.maybe_reload() is False
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    assert db.lookup(packed("192.0.2.1")).asn == 64500
    dbip_asn(Path(path), asn=64503)
    assert db.maybe_reload() is True
    assert db.lookup(packed("192.0.2.1")).asn == 64503


def test_reopen_opens_every_file_again_and_keeps_a_bad_one(tmp_path: Path) -> None:
    asn = dbip_asn(tmp_path / "asn.mmdb", asn=64500)
    country = dbip_country(tmp_path / "country.mmdb")
    db = Ipdb([asn, country])
    assert db.reopen() is True
    assert db.reloads == 2
    replace(country, lambda tmp: tmp.write_bytes(b"garbage"))
    assert db.reopen() is True  # the ASN file was reopened; the country file refused
    assert db.reload_failures == 1
    assert db.lookup(packed("192.0.2.1")) == Network(64500, "Lab Net A", "DE", "EU", "Germany")


def test_file_rewritten_in_place_with_garbage_leaves_the_loaded_copy_intact(
    tmp_path: Path,
) -> None:
    copies = tmp_path / "copies"
    copies.mkdir()
    asn = dbip_asn(tmp_path / "asn.mmdb", asn=64500)
    country = dbip_country(tmp_path / "country.mmdb")
    db = Ipdb([asn, country], copy_dir=str(copies))
    assert list(copies.iterdir()) == []  # each copy is unlinked once open
    Path(country).write_bytes(b"garbage")  # in place: same inode
    assert db.maybe_reload() is False
    assert db.lookup(packed("192.0.2.1")) == Network(64500, "Lab Net A", "DE", "EU", "Germany")
    assert db.lookup_errors == 0
    replace(asn, lambda tmp: dbip_asn(tmp, asn=64501))
    assert db.maybe_reload() is True
    assert list(copies.iterdir()) == []


def test_a_failing_lookup_is_no_answer_and_logs_no_address(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = dbip_asn(tmp_path / "asn.mmdb", asn=64500)
    db = Ipdb([path], private_copy=False)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.write(b"\xff" * size)  # in place, same size: the mapping sees it, no SIGBUS
    with caplog.at_level(logging.ERROR, logger="resetwatch"):
        assert db.lookup(packed("192.0.2.77")) is NO_NETWORK
        assert db.lookup(packed("192.0.2.77")) is NO_NETWORK  # not cached: asked again
    assert db.lookup_errors == 2
    assert len(caplog.records) == 1
    assert path in caplog.text
    assert "192.0.2" not in caplog.text


TRUNCATE_IN_PLACE = """
import ipaddress, os, sys, maxminddb
from resetwatch.ipdb import Ipdb
path, private = sys.argv[1], sys.argv[2] == "copy"
networks = [net for net, _ in maxminddb.open_database(path)]
db = Ipdb([path], private_copy=private)
with open(path, "r+b") as f:
    f.truncate(0)  # what `gunzip > file` does first
for net in networks:
    db.lookup(net.network_address.packed)
print("answered", db.hits)
"""


@pytest.mark.parametrize("private", ["copy", "mapped"])
def test_file_truncated_in_place_under_a_running_reader(tmp_path: Path, private: str) -> None:
    # In a child process: without the private copy the reader's mapping loses its pages.
    import signal
    import subprocess

    path = tmp_path / "GeoLite2-City-Test.mmdb"
    shutil.copyfile(GEOLITE_CITY, path)
    agent = str(Path(__file__).resolve().parents[2] / "agent")
    env = dict(os.environ, PYTHONPATH=agent)
    child = subprocess.run([sys.executable, "-c", TRUNCATE_IN_PLACE, str(path), private],
                           capture_output=True, text=True, env=env, timeout=60)
    if private == "copy":
        assert child.returncode == 0, child.stderr
        assert child.stdout.startswith("answered ")
        assert int(child.stdout.split()[1]) > 200
    else:
        assert child.returncode == -signal.SIGBUS


def test_replacement_while_lookups_run_in_another_thread(tmp_path: Path) -> None:
    path = dbip_asn(tmp_path / "asn.mmdb", asn=1)
    db = Ipdb([path])
    seen: set[Any] = set()
    failures: list[BaseException] = []
    stop = threading.Event()

    def loop() -> None:
        rng = random.Random(5)
        try:
            while not stop.is_set():
                seen.add(db.lookup(bytes([192, 0, 2, rng.randrange(256)])).asn)
        except BaseException as error:  # reported below
            failures.append(error)

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        for asn in range(2, 12):
            if asn % 3 == 0:
                replace(path, lambda tmp: tmp.write_bytes(b"\0" * 1000))  # refused
                assert db.maybe_reload() is False
            replace(path, lambda tmp, asn=asn: dbip_asn(tmp, asn=asn))
            assert db.maybe_reload() is True
    finally:
        stop.set()
        worker.join(timeout=30)
    assert not failures
    assert seen <= set(range(1, 12))
    assert db.lookup(packed("192.0.2.1")).asn == 11
