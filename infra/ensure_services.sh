#!/usr/bin/env bash
# Make sure the system packages the test suite starts are on this machine (a fresh clone on a
# fresh machine must work): PostgreSQL server binaries for the Redshift-protocol loader tests, and
# Debian's chromium for the report's layout test (tests/pipelines/test_report_browser.py) and the
# browser-library test of the collector (tests/pipelines/test_collect_browser.py; that library is
# built from npm by infra/build_browser_sdk.sh when the test runs). Both tests skip without
# /usr/bin/chromium. moto's server and DuckDB come from PyPI (setup.py). A no-op when all are present.
set -euo pipefail
have_postgres() {
    [ -n "${LIVORA_PG_BIN:-}" ] && [ -x "$LIVORA_PG_BIN/initdb" ] && return 0
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && return 0
    command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1
}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
UPDATED=""
apt_install() {
    [ -n "$UPDATED" ] || { $SUDO apt-get update -qq; UPDATED=1; }
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
if ! have_postgres; then
    echo "PostgreSQL server binaries not found: installing Debian's postgresql package" >&2
    apt_install postgresql
fi
if [ ! -x /usr/bin/chromium ]; then
    echo "/usr/bin/chromium not found: installing Debian's chromium package (browser tests)" >&2
    apt_install chromium
fi
