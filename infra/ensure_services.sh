#!/usr/bin/env bash
# Make sure the system packages the test suite starts are on this machine (a fresh clone on a
# fresh machine must work): PostgreSQL server binaries for the Redshift-protocol loader tests.
# moto's server and DuckDB come from PyPI (setup.py); Chromium (below) for the browser-library test.
set -euo pipefail
have_postgres() {
    [ -n "${LIVORA_PG_BIN:-}" ] && [ -x "$LIVORA_PG_BIN/initdb" ] && return 0
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && return 0
    command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1
}
if ! have_postgres; then
    echo "PostgreSQL server binaries not found: installing Debian's postgresql package" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi
# Headless Chromium for the browser-library test (tests/pipelines/test_collect_browser.py); the
# library itself is built from npm by infra/build_browser_sdk.sh when the test runs.
if [ ! -x /usr/bin/chromium ] && ! command -v chromium >/dev/null 2>&1; then
    echo "chromium not found: installing Debian's chromium package" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
