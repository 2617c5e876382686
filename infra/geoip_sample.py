"""Build a small MaxMind-format GeoIP2-City database for tests and the local demo.

Real deployments configure the licensed GeoIP2-City (or free GeoLite2-City) file; we cannot ship or
download it, so the demo and tests write a database in the same binary format (mmdb-writer) with a
handful of real-world ranges. ``SAMPLE_NETWORKS`` is the ground truth tests assert against.

    python -m infra.geoip_sample OUT.mmdb
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NamedTuple

from mmdb_writer import MMDBWriter
from netaddr import IPSet

__all__ = ["SAMPLE_NETWORKS", "SampleNetwork", "build_sample_city_db", "sample_ips"]


class SampleNetwork(NamedTuple):
    cidr: str
    country: str  # ISO 3166-1 alpha-2
    country_name: str
    region_code: str | None
    region: str | None
    city: str | None
    latitude: float
    longitude: float
    time_zone: str


SAMPLE_NETWORKS: tuple[SampleNetwork, ...] = (
    SampleNetwork("49.36.0.0/16", "IN", "India", "MH", "Maharashtra", "Mumbai", 19.0728, 72.8826, "Asia/Kolkata"),
    SampleNetwork("106.51.0.0/16", "IN", "India", "KA", "Karnataka", "Bengaluru", 12.9634, 77.5855, "Asia/Kolkata"),
    SampleNetwork("117.96.0.0/16", "IN", "India", "DL", "Delhi", "New Delhi", 28.6328, 77.2204, "Asia/Kolkata"),
    SampleNetwork("182.64.0.0/16", "IN", "India", "TN", "Tamil Nadu", "Chennai", 13.0878, 80.2785, "Asia/Kolkata"),
    SampleNetwork("27.4.0.0/16", "IN", "India", "WB", "West Bengal", "Kolkata", 22.5626, 88.363, "Asia/Kolkata"),
    # Only a country: a mobile range with no city-level precision.
    SampleNetwork("157.32.0.0/16", "IN", "India", None, None, None, 21.9974, 79.0011, "Asia/Kolkata"),
    SampleNetwork(
        "8.8.8.0/24",
        "US",
        "United States",
        "CA",
        "California",
        "Mountain View",
        37.4223,
        -122.085,
        "America/Los_Angeles",
    ),
    SampleNetwork(
        "81.2.69.0/24", "GB", "United Kingdom", "ENG", "England", "London", 51.5142, -0.0931, "Europe/London"
    ),
    SampleNetwork(
        "94.200.0.0/16", "AE", "United Arab Emirates", "DU", "Dubai", "Dubai", 25.0657, 55.1713, "Asia/Dubai"
    ),
    SampleNetwork("2405:200::/32", "IN", "India", "MH", "Maharashtra", "Mumbai", 19.0728, 72.8826, "Asia/Kolkata"),
)


def _record(net: SampleNetwork) -> dict[str, Any]:
    """One GeoIP2-City record (same keys and nesting as MaxMind's files)."""
    record: dict[str, Any] = {
        "country": {"iso_code": net.country, "names": {"en": net.country_name}},
        "registered_country": {"iso_code": net.country, "names": {"en": net.country_name}},
        "location": {
            "latitude": float(net.latitude),
            "longitude": float(net.longitude),
            "accuracy_radius": 50,
            "time_zone": net.time_zone,
        },
    }
    if net.region:
        record["subdivisions"] = [{"iso_code": net.region_code, "names": {"en": net.region}}]
    if net.city:
        record["city"] = {"names": {"en": net.city}}
    return record


def build_sample_city_db(path: str | Path, networks: tuple[SampleNetwork, ...] = SAMPLE_NETWORKS) -> Path:
    """Write an IPv6 GeoIP2-City database (IPv4 mapped at ::/96, like MaxMind's) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type="GeoIP2-City",
        languages=["en"],
        description="Livora sample GeoIP2-City (tests and demo only)",
    )
    for net in networks:
        writer.insert_network(IPSet([net.cidr]), _record(net))
    writer.to_db_file(str(path))
    return path


def sample_ips() -> list[tuple[str, SampleNetwork]]:
    """A few addresses inside each sample network (for synthetic traffic and tests)."""
    import ipaddress

    out = []
    for net in SAMPLE_NETWORKS:
        network = ipaddress.ip_network(net.cidr)
        for offset in (1, 77, 4097):
            if offset < network.num_addresses:
                out.append((str(network.network_address + offset), net))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a small sample GeoIP2-City database (MaxMind format).")
    parser.add_argument("out", help="Path of the .mmdb file to write.")
    args = parser.parse_args(argv)
    print(build_sample_city_db(args.out))


if __name__ == "__main__":
    main()
