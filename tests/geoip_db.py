"""Test helper: a small MaxMind-format GeoIP2-City database (built by infra.geoip_sample)."""

from infra.geoip_sample import SAMPLE_NETWORKS, SampleNetwork, build_sample_city_db, sample_ips

__all__ = ["SAMPLE_NETWORKS", "SampleNetwork", "build_sample_city_db", "sample_ips"]
