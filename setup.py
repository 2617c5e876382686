"""Livora data pipelines: event contract, transform library, connectors and Beam pipelines."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "apache-beam[aws]==2.77.0",
    "pyarrow>=18",
    "boto3>=1.35",
    "fastavro>=1.9",
    "pydantic>=2.7,<3",
    "pyyaml>=6",
    "orjson>=3.10",
    "pycountry>=24",
    "great-expectations>=1.3",
    "ua-parser[re2]>=1.0",
    "ua-parser-rs>=0.1.5",
    "maxminddb>=2.6",
    "geoip2>=4.8",
    "phonenumbers>=8.13",
    "currencyconverter>=0.17",
    "moto[server]>=5.0",
    "duckdb>=1.1",
    "psycopg[binary]>=3.2",
    "numpy>=1.26",
    "pandas>=2.2",
    "scipy>=1.11",
    "mmdb-writer>=0.2",  # the demo writes a sample GeoIP database (infra/geoip_sample.py)
    "netaddr>=1.0",
    # the HTTP collector (connectors/collector, pipelines/collect.py; docs/collector.md)
    "starlette>=0.40",
    "uvicorn[standard]>=0.30",
    "prometheus-client>=0.20",
    "mangum>=0.17",
    # the HTML report (pipelines/report_page): templates with autoescape, Vega-Lite charts rendered to SVG
    # in-process (vl-convert embeds Vega and a JS engine: no browser, no network, no script in the page)
    "jinja2>=3.1",
    "altair>=5.4",
    "vl-convert-python>=1.7",
]

TEST_REQUIRES = [
    "pytest>=8",
    "pytest-timeout>=2.3",
    "hypothesis>=6.100",
    "jsonschema>=4",
    "ruff>=0.6",
    "lifetimes==0.11.3",  # only its bundled CDNOW data files (tests of pipelines.clv)
    "chdb>=3",  # ClickHouse's own windowFunnel as the reference in funnel property tests
    "aws-kinesis-agg>=1.2",  # an independent KPL aggregator producing test records for our de-aggregator
    "six",  # aws-kinesis-agg imports it without declaring it
    "httpx>=0.27",  # collector tests: async clients, Starlette's TestClient
    "segment-analytics-python>=2.3",  # the official Segment library as the collector's client in tests
    "razorpay>=1.4",  # the official SDK's signature check as an independent reference in tests
    "sqlglot>=25",  # parses the generated Athena/Redshift DDL in tests (schemas.ddl)
]

# the CDK app (infra/app.py, docs/infrastructure.md); its jsii runtime needs Node.js on PATH
INFRA_REQUIRES = [
    "aws-cdk-lib>=2.170,<3",
    "constructs>=10,<11",
    "cfn-lint>=1.20",  # lints the synthesized templates (tests/infra/test_cdk.py)
]

setup(
    name="livora-pipelines",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",
    packages=find_packages(include=["pipelines*", "transforms*", "schemas*", "connectors*", "infra*"]),
    package_data={
        "pipelines": ["report_page/templates/*.j2"],
        "schemas": ["*.yaml", "tracking_plans/*.yaml"],
        "infra": ["*.yaml", "*.json"],
        "connectors": ["samples/*.json"],
    },
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES + INFRA_REQUIRES, "infra": INFRA_REQUIRES},
    entry_points={"console_scripts": ["livora=pipelines.cli:main"]},
)
