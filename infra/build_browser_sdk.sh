#!/usr/bin/env bash
# Build Segment's official browser library (@segment/analytics-next) into one IIFE file that a test
# page can load with a <script> tag. Inputs are committed (infra/browser_sdk/package.json, the
# lockfile pinning every package with its integrity hash, entry.js); node_modules and the bundle live
# in an ignored cache folder and are rebuilt only when an input changed.
#   infra/build_browser_sdk.sh [CACHE_DIR]      (default .cache/browser-sdk) → prints the bundle path
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$here/browser_sdk"
cache="${1:-$here/../.cache/browser-sdk}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"
command -v npm >/dev/null 2>&1 || { echo "npm not found: install Node.js (Debian: apt-get install -y npm)" >&2; exit 3; }
stamp="$(cat "$src/package.json" "$src/package-lock.json" "$src/entry.js" | sha256sum | cut -c1-16)"
bundle="$cache/analytics-next.$stamp.js"
if [ ! -s "$bundle" ]; then
    cp "$src/package.json" "$src/package-lock.json" "$src/entry.js" "$cache/"
    # --ignore-scripts: no install hooks run (esbuild's binary comes from its platform package).
    (cd "$cache" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
    (cd "$cache" && ./node_modules/.bin/esbuild entry.js --bundle --format=iife --minify \
        --target=es2019 --log-level=warning --outfile="$bundle.tmp" >&2)
    mv "$bundle.tmp" "$bundle"
fi
echo "$bundle"
