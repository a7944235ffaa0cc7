"""The client network of an address (ASN, AS name, country, continent) from local IP databases.

The files are in the MaxMind DB format that the free sources publish: GeoLite2-ASN and
GeoLite2-Country/-City, DB-IP Lite ASN and country/city (same keys as GeoLite2), IPinfo Lite
(one flat file: `asn` as "AS174", `as_name`, `country_code`, `continent_code`). Each file's
layout is found from its metadata `database_type` and from the keys of its first records, so
`describe()` can say at start which file answers which field.

Lookups are cached by network: the reader says how long the prefix of the answer is, and every
address inside that prefix has the same answer, so a flood of sources inside one network costs
one real lookup per database network. The cache is bounded and starts empty after a reload.

Files are replaced monthly by their updaters. `maybe_reload()` (a cheap stat per file) and
`reopen()` (SIGHUP) open and check a new file completely before swapping it in, in one
assignment that lookups never wait for; a file that fails the check is refused and the loaded
copy kept.

The reader maps its file into memory, and a mapped file rewritten in place (`gunzip > file`
from a cron job, rather than a rename as geoipupdate does) gives wrong answers, or kills the
process with SIGBUS when it shrinks. So by default each file is copied first, the copy opened
and at once unlinked: the mapping keeps it alive, nothing is left behind, and what was checked
is what is read. The cost is the file's size in the temporary directory's page cache.

`maxminddb` is an optional dependency (the `geo` extra), imported only when a file is opened.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional

if TYPE_CHECKING:
    from maxminddb import Reader

log = logging.getLogger("resetwatch")

FIELDS = ("asn", "as_name", "country", "continent", "country_name")
"""The fields a `Network` has, in order."""

CACHE_SIZE = 65536
"""Cached networks at most (both families); the cache is emptied when full."""

CACHE_PROBES = 4
"""Prefix lengths tried in the cache before a real lookup: the most populated ones."""

SAMPLE_RECORDS = 64
"""Records read from the start of a file to find its keys (and to check that it decodes)."""

INSTALL_HINT = "pip install '.[geo]' from a checkout"


class IpdbError(Exception):
    """A database cannot be used (missing reader, unreadable, corrupt, answers nothing)."""


class Network(NamedTuple):
    """What the databases say about one address; None where they have no answer."""

    asn: Optional[int]
    as_name: Optional[str]
    country: Optional[str]
    """ISO 3166 alpha-2, upper case."""
    continent: Optional[str]
    """Two letters (AF, AN, AS, EU, NA, OC, SA) when a database has it."""
    country_name: Optional[str] = None
    """The country's English name (`country.names.en`; IPinfo Lite's `country`), for the
    API's top lists; never in a label."""

    @property
    def found(self) -> bool:
        return any(value is not None for value in self)


NO_NETWORK = Network(None, None, None, None, None)
_NONE: list[Any] = [None] * len(FIELDS)


class IpdbFile(NamedTuple):
    """One open database file, as `Ipdb.files` lists it."""

    path: str
    database_type: str
    fields: tuple[str, ...]
    """The `FIELDS` this file answers."""
    build_epoch: int
    ip_version: int


Signature = tuple[int, int, int]
"""(st_ino, st_mtime_ns, st_size): a file changed when this changed."""

Getter = Callable[[Mapping[str, Any]], Any]


# --- reading values out of records, whatever the layout ----------------------------------


def _as_number(value: Any) -> Optional[int]:
    # GeoLite2 and DB-IP store an int, IPinfo a string "AS174".
    if isinstance(value, str) and value[:2].upper() == "AS":
        value = value[2:]
        if not value.isdigit():
            return None
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 32:
        return value
    return None


def _text(value: Any) -> Optional[str]:
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return None


def _code(value: Any) -> Optional[str]:
    # Two ASCII letters, upper case: country and continent codes (they end up in labels).
    if isinstance(value, str) and len(value) == 2 and value.isascii() and value.isalpha():
        return value.upper()
    return None


def _nested(record: Mapping[str, Any], outer: str, inner: str) -> Any:
    part = record.get(outer)
    return part.get(inner) if isinstance(part, dict) else None


def _asn_maxmind(record: Mapping[str, Any]) -> Optional[int]:
    return _as_number(record.get("autonomous_system_number"))


def _as_name_maxmind(record: Mapping[str, Any]) -> Optional[str]:
    return _text(record.get("autonomous_system_organization"))


def _country_nested(record: Mapping[str, Any]) -> Optional[str]:
    return _code(_nested(record, "country", "iso_code"))


def _continent_nested(record: Mapping[str, Any]) -> Optional[str]:
    return _code(_nested(record, "continent", "code"))


def _country_name_nested(record: Mapping[str, Any]) -> Optional[str]:
    names = _nested(record, "country", "names")
    return _text(names.get("en")) if isinstance(names, dict) else None


def _asn_flat(record: Mapping[str, Any]) -> Optional[int]:
    return _as_number(record.get("asn"))


def _as_name_flat(record: Mapping[str, Any]) -> Optional[str]:
    return _text(record.get("as_name"))


def _country_flat(record: Mapping[str, Any]) -> Optional[str]:
    # IPinfo Lite: country_code (its `country` is the name); IPinfo's older country_asn
    # file has the code itself in `country`, which _code tells from a name.
    return _code(record.get("country_code")) or _code(record.get("country"))


def _continent_flat(record: Mapping[str, Any]) -> Optional[str]:
    return _code(record.get("continent_code")) or _code(record.get("continent"))


def _country_name_flat(record: Mapping[str, Any]) -> Optional[str]:
    # IPinfo Lite's `country` is the name beside `country_code`; alone, it is the code (the
    # older country_asn file, which has the name in `country_name`).
    if "country_code" in record:
        return _text(record.get("country"))
    return _text(record.get("country_name"))


_MAXMIND_ASN: dict[str, Getter] = {"asn": _asn_maxmind, "as_name": _as_name_maxmind}
_MAXMIND_GEO: dict[str, Getter] = {
    "country": _country_nested,
    "continent": _continent_nested,
    "country_name": _country_name_nested,
}
_FLAT: dict[str, Getter] = {
    "asn": _asn_flat,
    "as_name": _as_name_flat,
    "country": _country_flat,
    "continent": _continent_flat,
    "country_name": _country_name_flat,
}

# Record keys that show a layout, per field.
_KEYS: tuple[tuple[str, Callable[[Mapping[str, Any]], bool], Getter], ...] = (
    ("asn", lambda r: "autonomous_system_number" in r, _asn_maxmind),
    ("as_name", lambda r: "autonomous_system_organization" in r, _as_name_maxmind),
    ("country", lambda r: isinstance(r.get("country"), dict), _country_nested),
    ("continent", lambda r: isinstance(r.get("continent"), dict), _continent_nested),
    ("country_name", lambda r: isinstance(r.get("country"), dict), _country_name_nested),
    ("asn", lambda r: "asn" in r, _asn_flat),
    ("as_name", lambda r: "as_name" in r, _as_name_flat),
    ("country", lambda r: "country_code" in r or isinstance(r.get("country"), str),
     _country_flat),
    ("continent", lambda r: "continent_code" in r or isinstance(r.get("continent"), str),
     _continent_flat),
    ("country_name", lambda r: ("country_code" in r and isinstance(r.get("country"), str))
     or "country_name" in r, _country_name_flat),
)


def _known_type(database_type: str) -> dict[str, Getter]:
    """Getters implied by a database type we know (GeoLite2, GeoIP2, DB-IP)."""
    name = database_type.split(" ")[0]  # "DBIP-ASN-Lite (compat=GeoLite2-ASN)"
    if name in ("GeoLite2-ASN", "DBIP-ASN-Lite", "DBIP-ASN"):
        return dict(_MAXMIND_ASN)
    vendor, _, product = name.partition("-")
    if vendor in ("GeoLite2", "GeoIP2", "DBIP") and product.startswith(("Country", "City")):
        return dict(_MAXMIND_GEO)
    return {}


def _getters(database_type: str, records: Iterable[Any]) -> dict[str, Getter]:
    """Which field each getter reads, from the database type and the keys of sample records."""
    found = _known_type(database_type)
    for record in records:
        if not isinstance(record, dict):  # the readers decode maps to dicts
            continue
        for field, present, getter in _KEYS:
            if field not in found and present(record):
                found[field] = getter
    return found


# --- one open file ----------------------------------------------------------------------


def _maxminddb() -> Any:
    try:
        import maxminddb
    except ImportError:
        raise IpdbError(f"reading an ipdb needs the maxminddb package: {INSTALL_HINT}") from None
    return maxminddb


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


class _Db(NamedTuple):
    info: IpdbFile
    reader: Reader
    getters: tuple[tuple[int, Getter], ...]
    """(index in FIELDS, getter) for the fields this file answers."""
    signature: Signature


def _signature(st: os.stat_result) -> Signature:
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _probe_addresses(ip_version: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    probes: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [
        ipaddress.IPv4Address("1.1.1.1")
    ]
    if ip_version == 6:
        probes.append(ipaddress.IPv6Address("2001:db8::1"))
    return probes


def _private_copy(path: str, directory: str) -> str:
    fd, copy = tempfile.mkstemp(prefix="resetwatch-ipdb-", suffix=".mmdb", dir=directory)
    try:
        with open(path, "rb") as source, os.fdopen(fd, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
    except BaseException:
        os.unlink(copy)
        raise
    return copy


def _open(path: str, stat: Callable[[str], os.stat_result], copy_dir: Optional[str]) -> _Db:
    """Open one file and check it completely: metadata, the first records, a lookup."""
    maxminddb = _maxminddb()
    try:
        before = _signature(stat(path))
    except OSError as error:
        raise IpdbError(f"ipdb {path}: {error.strerror or _one_line(error)}") from None
    try:
        copy = _private_copy(path, copy_dir) if copy_dir is not None else None
    except OSError as error:
        problem = error.strerror or _one_line(error)
        raise IpdbError(f"ipdb {path}: cannot copy it to {copy_dir}: {problem}") from None
    try:
        reader = maxminddb.open_database(copy or path)
    except Exception as error:  # the reader raises several types for bad files
        raise IpdbError(f"ipdb {path}: not a usable MaxMind DB file: {_one_line(error)}") from None
    finally:
        if copy is not None:
            os.unlink(copy)  # the reader's mapping (or open file) keeps the data
    try:
        meta = reader.metadata()
        database_type = str(meta.database_type)
        build_epoch = int(meta.build_epoch)
        ip_version = int(meta.ip_version)
        if ip_version not in (4, 6):
            raise ValueError(f"ip_version {ip_version}")
        sample = []
        for number, (_network, record) in enumerate(reader):
            sample.append(record)
            if number + 1 >= SAMPLE_RECORDS:
                break
        for address in _probe_addresses(ip_version):
            reader.get_with_prefix_len(address)
    except Exception as error:
        reader.close()
        raise IpdbError(f"ipdb {path}: corrupt MaxMind DB file: {_one_line(error)}") from None
    getters = _getters(database_type, sample)
    if not getters:
        reader.close()
        raise IpdbError(
            f"ipdb {path}: {database_type or 'this database'} answers none of "
            f"{', '.join(FIELDS)} (no known keys in its records)"
        )
    fields = tuple(field for field in FIELDS if field in getters)
    info = IpdbFile(path, database_type, fields, build_epoch, ip_version)
    ordered = tuple((FIELDS.index(field), getters[field]) for field in fields)
    # Signature from before the open: if the file was replaced meanwhile, the next check
    # sees a change and opens it again, rather than keeping a stale copy for a month.
    return _Db(info, reader, ordered, before)


def _describe(info: IpdbFile) -> str:
    built = datetime.fromtimestamp(info.build_epoch, timezone.utc).strftime("%Y-%m-%d")
    kind = info.database_type or "untyped"
    return f"{os.path.basename(info.path)}: {', '.join(info.fields)} ({kind}, built {built})"


# --- the cache ----------------------------------------------------------------------------


class _PrefixCache:
    """Answers by network, one dict per prefix length, for one address family.

    Only the `CACHE_PROBES` lengths that needed the most real lookups are tried, so a miss in
    the cache costs a few dict probes before the real lookup, however many lengths a database
    has. Ranking by real lookups (not by entries) lets a length with one busy network (a
    flood inside one unmapped /16) be probed."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.clear()

    def clear(self) -> None:
        self.tables: dict[int, dict[int, Network]] = {}
        self.weights: dict[int, int] = {}
        self.probe: list[tuple[int, dict[int, Network]]] = []
        self._probed: set[int] = set()
        self._floor = 0
        self._puts = 0
        self.size = 0

    def get(self, value: int) -> Optional[Network]:
        bits = self.bits
        for length, table in self.probe:
            hit = table.get(value >> (bits - length))
            if hit is not None:
                return hit
        return None

    def put(self, value: int, length: int, network: Network) -> None:
        table = self.tables.get(length)
        if table is None:
            table = self.tables[length] = {}
        key = value >> (self.bits - length)
        if key not in table:
            table[key] = network
            self.size += 1
        self._puts += 1
        if self._puts % 4096 == 0:  # weights follow recent real lookups, not all since start
            self.weights = {n: w >> 1 for n, w in self.weights.items()}
            self._floor >>= 1
        weight = self.weights[length] = self.weights.get(length, 0) + 1
        # Some hysteresis, so that two lengths of about the same weight do not re-rank at
        # every put.
        if length not in self._probed and (
            len(self.probe) < CACHE_PROBES or weight > self._floor * 9 // 8 + 1
        ):
            ranked = sorted(self.weights, key=lambda n: -self.weights[n])[:CACHE_PROBES]
            self.probe = [(n, self.tables[n]) for n in ranked]
            self._probed = set(ranked)
            self._floor = min(self.weights[n] for n in ranked)


class _State(NamedTuple):
    dbs: tuple[_Db, ...]
    v4: _PrefixCache
    v6: _PrefixCache


def _state(dbs: Sequence[_Db]) -> _State:
    return _State(tuple(dbs), _PrefixCache(32), _PrefixCache(128))


# --- the lookup ---------------------------------------------------------------------------


class Ipdb:
    """The open databases. `lookup` is for the packet loop (never blocks on a reload);
    `maybe_reload` and `reopen` may run in another thread.

    `paths`: the files, in order of precedence (the first file answering a field wins);
    `stat`: how a file's signature is read (tests); `cache_size`: cached networks at most;
    `private_copy`: open a copy of each file (see the module text) made in `copy_dir` (default
    the temporary directory, private under the systemd unit's PrivateTmp).

    Counters (plain ints, read them for metrics): `lookups`; `hits` (some field answered) and
    `misses` (no answer); `cache_hits` (answered from the cache) and `db_lookups` (reader
    calls); `lookup_errors` (a reader failed on a lookup: no answer, not cached); `reloads`
    (files swapped in) and `reload_failures` (new files refused)."""

    def __init__(
        self,
        paths: Sequence[str],
        stat: Callable[[str], os.stat_result] = os.stat,
        cache_size: int = CACHE_SIZE,
        private_copy: bool = True,
        copy_dir: Optional[str] = None,
    ) -> None:
        if not paths:
            raise IpdbError("ipdb: no database file given")
        self.paths = tuple(dict.fromkeys(str(path) for path in paths))
        self._stat = stat
        self.cache_size = cache_size
        self._copy_dir = (copy_dir or tempfile.gettempdir()) if private_copy else None
        self._state = _state([_open(path, stat, self._copy_dir) for path in self.paths])
        self._reload_lock = threading.Lock()
        self._refused: dict[str, object] = {}  # path -> signature last refused (log once)
        self.lookups = 0
        self.hits = 0
        self.misses = 0
        self.cache_hits = 0
        self.db_lookups = 0
        self.lookup_errors = 0
        self.reloads = 0
        self.reload_failures = 0

    # - what is open -

    @property
    def files(self) -> tuple[IpdbFile, ...]:
        return tuple(db.info for db in self._state.dbs)

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields some open file answers."""
        answered = {field for db in self._state.dbs for field in db.info.fields}
        return tuple(field for field in FIELDS if field in answered)

    def describe(self) -> list[str]:
        """One line per file: which fields it answers, its type and build date."""
        return [_describe(db.info) for db in self._state.dbs]

    @property
    def cached(self) -> int:
        state = self._state
        return state.v4.size + state.v6.size

    # - lookups -

    def lookup(self, address: bytes) -> Network:
        """The network of a packed IPv4 (4 bytes) or IPv6 (16 bytes) address."""
        state = self._state  # one reference: a reload swapping the state does not affect us
        self.lookups += 1
        if len(address) == 4:
            cache = state.v4
        elif len(address) == 16:
            cache = state.v6
        else:
            raise ValueError(f"an address is 4 or 16 bytes, not {len(address)}")
        value = int.from_bytes(address, "big")
        network = cache.get(value)
        if network is not None:
            self.cache_hits += 1
        else:
            network, length = self._resolve(state.dbs, address)
            if length is not None:
                if state.v4.size + state.v6.size >= self.cache_size:
                    state.v4.clear()  # simplest bound: start again when full
                    state.v6.clear()
                cache.put(value, length, network)
        if network is NO_NETWORK:
            self.misses += 1
        else:
            self.hits += 1
        return network

    def _resolve(self, dbs: tuple[_Db, ...], address: bytes) -> tuple[Network, Optional[int]]:
        """The merged answer of the files (the first file answering a field wins) and the
        prefix length it holds for (the longest of the files consulted; None: do not cache)."""
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = (
            ipaddress.IPv4Address(address) if len(address) == 4 else ipaddress.IPv6Address(address)
        )
        values: list[Any] = _NONE.copy()
        length: Optional[int] = 0
        v6 = len(address) == 16
        for db in dbs:
            if v6 and db.info.ip_version == 4:
                continue  # an IPv4-only file has no IPv6 answer, for all of IPv6
            for index, _ in db.getters:
                if values[index] is None:
                    break
            else:
                continue  # earlier files answered everything this one could
            self.db_lookups += 1
            try:
                record, prefix = db.reader.get_with_prefix_len(ip)
            except Exception as error:
                self.lookup_errors += 1
                if self.lookup_errors == 1:
                    # Not the reader's message: it holds the address.
                    log.error("ipdb %s: a lookup failed (%s): the file is damaged; no answer "
                              "until it is replaced", db.info.path, type(error).__name__)
                length = None
                continue
            if length is not None and prefix > length:
                length = prefix
            if isinstance(record, dict):
                for index, getter in db.getters:
                    if values[index] is None:
                        values[index] = getter(record)
        if values == _NONE:
            return NO_NETWORK, length
        return Network(*values), length

    def close(self) -> None:
        """Close the readers (when no lookup runs any more: replay's end, tests)."""
        for db in self._state.dbs:
            db.reader.close()

    # - reloads -

    def maybe_reload(self) -> bool:
        """Swap in each file that changed on disk since it was opened (stat: cheap; call it
        every few seconds). A changed file that fails the checks is refused, logged once and
        counted; the loaded copy stays. True when something was swapped in."""
        with self._reload_lock:
            changed = []
            for db in self._state.dbs:
                path = db.info.path
                try:
                    now: object = _signature(self._stat(path))
                except OSError as error:
                    now = ("missing", error.errno)
                if now == db.signature or now == self._refused.get(path):
                    continue
                changed.append((path, now))
            return self._replace([path for path, _ in changed], dict(changed))

    def reopen(self) -> bool:
        """Open every file again (SIGHUP), keeping the loaded copy of any that fails."""
        with self._reload_lock:
            return self._replace([db.info.path for db in self._state.dbs], {})

    def _replace(self, paths: list[str], signatures: Mapping[str, object]) -> bool:
        if not paths:
            return False
        dbs = list(self._state.dbs)
        swapped = False
        for position, db in enumerate(dbs):
            path = db.info.path
            if path not in paths:
                continue
            try:
                new = _open(path, self._stat, self._copy_dir)
            except IpdbError as error:
                self.reload_failures += 1
                self._refused[path] = signatures.get(path, ("refused",))
                log.error("%s; keeping the loaded copy", error)
                continue
            self._refused.pop(path, None)
            dbs[position] = new
            swapped = True
            self.reloads += 1
            log.info("ipdb reloaded %s", _describe(new.info))
        if swapped:
            # One assignment: a lookup holds the old state or the new one, never a mix. Old
            # readers are not closed here (a lookup may be using one); they close when freed.
            self._state = _state(dbs)
        return swapped
