#!/usr/bin/env bash
# Installs the official AsyncAPI JSON schemas (the npm package @asyncapi/specs, pinned) into
# target/asyncapi-specs/ and prints the absolute path of the AsyncAPI 3.0.0 schema, which the
# eventbus-cli `asyncapi` test validates generated documents against. Idempotent: a second run
# only prints the path. Needs npm; installs nothing globally.
#
#   bash scripts/asyncapi-specs.sh
#   EVENTBUS_ASYNCAPI_SCHEMA=$(bash scripts/asyncapi-specs.sh) cargo test -p eventbus-cli --test asyncapi
set -euo pipefail
cd "$(dirname "$0")/.."

version=6.11.1
prefix="$PWD/target/asyncapi-specs"
package="$prefix/node_modules/@asyncapi/specs"
schema="$package/schemas/3.0.0.json"

installed=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$package/package.json" 2>/dev/null | head -n 1 || true)
if [ "$installed" != "$version" ] || [ ! -f "$schema" ]; then
    command -v npm >/dev/null || { echo "error: npm is missing (apt-get install npm)" >&2; exit 1; }
    mkdir -p "$prefix"
    # Quiet on stdout, whose only line is the path; the package runs no install scripts anyway.
    npm install --prefix "$prefix" --no-save --no-audit --no-fund --ignore-scripts \
        --loglevel=error "@asyncapi/specs@$version" >&2
fi
[ -f "$schema" ] || { echo "error: $schema is missing after installing @asyncapi/specs@$version" >&2; exit 1; }
echo "$schema"
