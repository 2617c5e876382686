"""Geo-IP lookups against a small GeoIP2-City database built in the test (MaxMind binary format)."""

from __future__ import annotations

import geoip2.database
import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from infra.geoip_sample import SAMPLE_NETWORKS, build_sample_city_db, sample_ips
from transforms.geoip import NO_GEO, GeoInfo, GeoIpLookup, geo_from_record, is_public_ip


@pytest.fixture(scope="module")
def city_db(tmp_path_factory) -> str:
    return str(build_sample_city_db(tmp_path_factory.mktemp("geo") / "city.mmdb"))


@pytest.fixture(scope="module")
def geo(city_db) -> GeoIpLookup:
    return GeoIpLookup(city_db, cache_size=64)


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("49.36.12.34", GeoInfo("IN", "Maharashtra", "Mumbai", 19.0728, 72.8826)),
        ("106.51.200.7", GeoInfo("IN", "Karnataka", "Bengaluru", 12.9634, 77.5855)),
        ("117.96.0.1", GeoInfo("IN", "Delhi", "New Delhi", 28.6328, 77.2204)),
        ("8.8.8.8", GeoInfo("US", "California", "Mountain View", 37.4223, -122.085)),
        ("2405:200:1:2::5", GeoInfo("IN", "Maharashtra", "Mumbai", 19.0728, 72.8826)),
        ("157.32.9.9", GeoInfo("IN", None, None, 21.9974, 79.0011)),  # country-level precision only
        ("::ffff:106.51.0.9", GeoInfo("IN", "Karnataka", "Bengaluru", 12.9634, 77.5855)),  # IPv4-mapped IPv6
        (" 49.36.0.1 ", GeoInfo("IN", "Maharashtra", "Mumbai", 19.0728, 72.8826)),  # stray whitespace
    ],
)
def test_lookup_known_ranges(geo, ip, expected):
    assert geo.lookup(ip) == expected


def test_every_sample_network_resolves_to_its_row(geo):
    for ip, net in sample_ips():
        assert geo.lookup(ip) == GeoInfo(net.country, net.region, net.city, net.latitude, net.longitude), ip
    assert len({net.cidr for _, net in sample_ips()}) == len(SAMPLE_NETWORKS)


@pytest.mark.parametrize(
    "ip",
    [
        "10.1.2.3",  # RFC 1918
        "192.168.1.10",
        "172.16.5.4",
        "127.0.0.1",  # loopback
        "100.64.1.1",  # carrier-grade NAT (very common on Indian mobile networks)
        "169.254.0.1",  # link-local
        "::1",
        "::ffff:192.168.0.1",  # IPv4-mapped private address
        "fe80::1",
        "not-an-ip",
        "999.1.1.1",
        "",
        None,
    ],
)
def test_private_and_invalid_addresses_give_nulls(geo, ip):
    assert geo.lookup(ip) == NO_GEO


def test_public_address_outside_the_database_gives_nulls(geo):
    assert geo.lookup("1.1.1.1") == NO_GEO


@pytest.mark.parametrize(
    ("ip", "public"),
    [("49.36.1.1", True), ("10.0.0.1", False), ("100.64.0.1", False), ("2405:200::1", True), ("x", False)],
)
def test_is_public_ip(ip, public):
    assert is_public_ip(ip) is public


def test_database_is_readable_by_maxminds_own_reader(city_db):
    """The file is a real GeoIP2-City database: geoip2's City model reads the same values."""
    with geoip2.database.Reader(city_db) as reader:
        assert reader.metadata().database_type == "GeoIP2-City"
        city = reader.city("106.51.1.1")
        assert city.country.iso_code == "IN"
        assert city.subdivisions.most_specific.name == "Karnataka"
        assert city.city.name == "Bengaluru"
        assert city.location.latitude == pytest.approx(12.9634)


def test_lookups_are_cached(city_db):
    geo = GeoIpLookup(city_db, cache_size=8)
    for _ in range(5):
        geo.lookup("49.36.1.1")
    info = geo.lookup.cache_info()
    assert (info.hits, info.misses) == (4, 1)


def test_ipv6_address_against_ipv4_only_database(tmp_path):
    writer = MMDBWriter(ip_version=4, database_type="GeoIP2-City", languages=["en"], description="v4 only")
    writer.insert_network(IPSet(["49.36.0.0/16"]), {"country": {"iso_code": "IN"}})
    path = tmp_path / "v4.mmdb"
    writer.to_db_file(str(path))
    geo = GeoIpLookup(str(path))
    assert geo.lookup("49.36.0.9") == GeoInfo("IN", None, None, None, None)
    assert geo.lookup("2405:200::1") == NO_GEO


def test_record_without_country_uses_registered_country():
    record = {"registered_country": {"iso_code": "SG", "names": {"en": "Singapore"}}}
    assert geo_from_record(record) == GeoInfo("SG", None, None, None, None)
    assert geo_from_record(None) == NO_GEO


def test_sample_builder_command_line(tmp_path, capsys):
    from infra.geoip_sample import main

    out = tmp_path / "nested" / "demo.mmdb"
    main([str(out)])
    assert capsys.readouterr().out.strip() == str(out)
    assert GeoIpLookup(str(out)).lookup("27.4.1.1").geo_city == "Kolkata"


def test_uncached_lookup(city_db):
    geo = GeoIpLookup(city_db, cache_size=0)
    assert not hasattr(geo.lookup, "cache_info")
    assert geo.lookup("182.64.1.1").geo_city == "Chennai"
