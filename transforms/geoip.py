"""Geo-IP lookup over a MaxMind-format City database (GeoIP2/GeoLite2-City or compatible).

The database path is configuration (tenants' contracts decide whether the licensed GeoIP2-City or
the free GeoLite2-City is used); tests and the demo build a small one with
:func:`infra.geoip_sample.build_sample_city_db`. Lookups are cached per IP string.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any, NamedTuple

import maxminddb

__all__ = ["GeoInfo", "GeoIpLookup", "geo_from_record", "is_public_ip", "public_address"]


class GeoInfo(NamedTuple):
    """The geo columns of a lake row; all ``None`` when unknown."""

    geo_country: str | None = None
    geo_region: str | None = None
    geo_city: str | None = None
    geo_latitude: float | None = None
    geo_longitude: float | None = None


NO_GEO = GeoInfo()


def public_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address to look up, or None when it is invalid or not globally routable.

    IPv4-mapped IPv6 (``::ffff:49.36.1.2``, as some proxies forward) is unwrapped to the IPv4 address.
    Private, loopback, link-local, carrier-grade NAT (100.64/10) and reserved ranges are not global.
    """
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address if address.is_global else None


def is_public_ip(ip: str) -> bool:
    """True for a syntactically valid, globally routable address."""
    return public_address(ip) is not None


def _name(record: dict[str, Any] | None, language: str) -> str | None:
    if not record:
        return None
    names = record.get("names") or {}
    return names.get(language) or names.get("en")


def geo_from_record(record: dict[str, Any] | None, language: str = "en") -> GeoInfo:
    """GeoInfo from one City-database record (the GeoIP2-City JSON shape)."""
    if not record:
        return NO_GEO
    country = record.get("country") or record.get("registered_country") or {}
    subdivisions = record.get("subdivisions") or []
    location = record.get("location") or {}
    return GeoInfo(
        geo_country=country.get("iso_code"),
        geo_region=_name(subdivisions[0], language) if subdivisions else None,
        geo_city=_name(record.get("city"), language),
        geo_latitude=location.get("latitude"),
        geo_longitude=location.get("longitude"),
    )


class GeoIpLookup:
    """IP string -> :class:`GeoInfo` from a MaxMind DB file, cached per IP (bounded LRU).

    The file is opened (memory-mapped when possible) on construction: build this lazily on the worker.
    Private, reserved and unparseable addresses give all-null geo columns without touching the file.
    ``cache_size=0`` disables the cache (for callers that cache finished rows themselves).
    """

    def __init__(self, path: str, cache_size: int = 100_000, language: str = "en") -> None:
        self.path = path
        self.language = language
        self._reader = maxminddb.open_database(path, maxminddb.MODE_AUTO)
        self.lookup = functools.lru_cache(maxsize=cache_size)(self._lookup) if cache_size else self._lookup

    def _lookup(self, ip: str | None) -> GeoInfo:
        address = public_address(ip) if ip else None
        if address is None:
            return NO_GEO
        try:
            record = self._reader.get(address)
        except ValueError:  # an IPv6 address against an IPv4-only database
            return NO_GEO
        return geo_from_record(record, self.language)

    def close(self) -> None:
        self._reader.close()

    @property
    def metadata(self) -> Any:
        return self._reader.metadata()
