#!/usr/bin/env bash
# Runs portcullis as the harness's EXTRA proxy: a pass-through config (no policy) with the
# upstream as the default proxy, so the harness's paths (/, /1m.bin, /post) are forwarded as is.
# POLICY=1 adds rules, a meter and scanners (see below). TRACES=<sample> (e.g. 0.01) adds
# `[telemetry] otlp` with that ratio, exporting to bench/otlp-sink.py (a collector that answers
# 200), to measure tracing against the same run without it.
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
# POLICY=1: the same proxy with the full request policy on every call: a rule trie (the
# harness's paths allowed by rule, everything else denied), a meter far above the load, and
# scanners with 100 literals plus every built-in detector over each request body.
if [ "${POLICY:-0}" = 1 ]; then
  sed -i 's/^default_effect = "allow"$/default_effect = "deny"/' "$cfg"
  {
    echo 'meter = { rate = 100000000, per = "1s", burst = 100000000 }'
    echo
    echo '  [[proxies.rules]]'
    echo '  effect = "allow"'
    echo '  methods = ["GET", "HEAD", "POST"]'
    echo '  path = "/**"'
    echo
    echo '  [[proxies.rules]]'
    echo '  effect = "deny"'
    echo '  methods = ["GET"]'
    echo '  path = "/admin/**"'
    echo
    echo '  [[proxies.scanners]]'
    echo '  name = "bench"'
    echo '  detectors = ["private_key", "aws_access_key", "github_token", "slack_token", "openai_key", "credit_card", "us_ssn", "iban"]'
    printf '  literals = ['
    for i in $(seq 1 100); do printf '"confidential-marker-%03d", ' "$i"; done
    echo '"TOP SECRET"]'
  } >>"$cfg"
fi
if [ -n "${TRACES:-}" ]; then
  portfile=$(mktemp /tmp/portcullis-otlp-port.XXXXXX)
  python3 "$(dirname "$0")/otlp-sink.py" "$portfile" &
  sink=$!
  for _ in $(seq 1 100); do [ -s "$portfile" ] && break; sleep 0.05; done
  printf '\n[telemetry]\notlp = { url = "http://127.0.0.1:%s/v1/traces", sample = %s }\n' \
    "$(cat "$portfile")" "$TRACES" >>"$cfg"
  # the gateway runs as a child so the sink can be stopped with it (the harness TERMs this script)
  PORTCULLIS_LOG=${PORTCULLIS_LOG:-warn} "$bin" run -c "$cfg" &
  gw=$!
  trap 'kill -TERM $gw 2>/dev/null; wait $gw; kill -TERM $sink 2>/dev/null; rm -f "$portfile"' TERM INT EXIT
  wait $gw
  exit
fi
PORTCULLIS_LOG=${PORTCULLIS_LOG:-warn} exec "$bin" run -c "$cfg"
