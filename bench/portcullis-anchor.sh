#!/usr/bin/env bash
# Runs portcullis as the harness's EXTRA proxy: a pass-through config (no policy) with the
# upstream as the default proxy, so the harness's paths (/, /1m.bin, /post) are forwarded as is.
#   usage: portcullis-anchor.sh PORT UPSTREAM_PORT WORKERS
set -euo pipefail
port=$1 up=$2 workers=$3
bin=${PORTCULLIS_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/dist/portcullis}
cfg=$(mktemp /tmp/portcullis-anchor.XXXXXX.toml)
cat >"$cfg" <<TOML
[server]
listen = ["127.0.0.1:$port"]
workers = $workers
default_proxy = "up"

[limits]
max_request_body = "1MiB"

[[proxies]]
name = "up"
upstream = "http://127.0.0.1:$up"
default_effect = "allow"
TOML
PORTCULLIS_LOG=${PORTCULLIS_LOG:-warn} exec "$bin" run -c "$cfg"
