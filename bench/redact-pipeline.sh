#!/usr/bin/env bash
# JSON responses through the whole pipeline, with and without redaction (issue 5): nginx serves
# a 1 MiB and a 4 KiB JSON document (application/json) on CPU 0 with wrk; portcullis runs alone
# on CPU 1 (the harness's "pin" layout) with two proxies to it: `pass` (no policy) and `red`
# (5 redaction paths). Prints requests/s, MiB/s and p50 for each; loopback only, bounded runs.
#   bash bench/redact-pipeline.sh            # DUR=8 CONNS=16
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${PORTCULLIS_BIN:-$root/target/dist/portcullis}
DUR=${DUR:-8}
CONNS=${CONNS:-16}
[ -x "$bin" ] || cargo build --profile dist --manifest-path "$root/Cargo.toml"
command -v wrk >/dev/null && command -v nginx >/dev/null || {
  apt-get update -q && apt-get install -y -q wrk nginx-light >/dev/null; }
T=$(mktemp -d /tmp/redact-bench.XXXXXX)
trap 'kill $(cat $T/nginx.pid 2>/dev/null) $PX 2>/dev/null || true; rm -rf $T' EXIT
python3 - "$T" <<'PY'
import json, sys, random
random.seed(7)
def rec(i):
    return {"id": i, "name": f"Customer {i}", "email": f"c{i}@example.com",
            "ssn": f"{random.randint(100,899)}-{random.randint(10,99)}-{random.randint(1000,9999)}",
            "address": {"street": f"{i} Main St", "city": "Springfield", "zip": f"{10000+i%89999}"},
            "accounts": [{"account_number": f"DE{random.randint(10**19, 10**20-1)}", "balance": random.random()*1e5,
                          "card": {"pan": "4111111111111111", "exp": "12/29"}} for _ in range(2)],
            "tags": ["a", "b", "vip" if i % 7 == 0 else "std"], "notes": "x" * 40}
for name, target in (("1m.json", 1 << 20), ("4k.json", 4096)):
    data, i = [], 0
    while len(json.dumps({"data": data})) < target:
        data.append(rec(i)); i += 1
    open(f"{sys.argv[1]}/{name}", "w").write(json.dumps({"data": data, "owner": {"email": "o@x", "ssn": "1"}}))
PY
mkdir -p $T/tmp
cat >$T/nginx.conf <<NG
worker_processes 1; daemon on; pid $T/nginx.pid; error_log $T/error.log warn; user root;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $T/tmp; proxy_temp_path $T/tmp; fastcgi_temp_path $T/tmp;
  uwsgi_temp_path $T/tmp; scgi_temp_path $T/tmp; keepalive_requests 100000000; keepalive_timeout 300s;
  types { application/json json; } sendfile on;
  server { listen 127.0.0.1:18181; root $T; } }
NG
taskset -c 0 nginx -c $T/nginx.conf
cat >$T/p.toml <<TOML
[server]
listen = ["127.0.0.1:18180"]
workers = 1
[[proxies]]
name = "pass"
upstream = "http://127.0.0.1:18181"
default_effect = "allow"
[[proxies]]
name = "red"
upstream = "http://127.0.0.1:18181"
default_effect = "allow"
  [[proxies.redact]]
  paths = ["\$..ssn", "\$.data[*].accounts[*].account_number", "\$..pan", "\$.owner.email", "\$.data[*].address.street"]
  action = "remove"
TOML
PORTCULLIS_LOG=warn taskset -c 1 "$bin" run -c $T/p.toml & PX=$!
sleep 1
printf '%-6s %-8s %10s %10s %9s\n' doc proxy req/s MiB/s p50
for doc in 4k.json 1m.json; do
  curl -sf localhost:18180/red/$doc | python3 -c 'import json,sys; d=json.load(sys.stdin); assert "ssn" not in json.dumps(d)' \
    || { echo "redacted output is not what it should be" >&2; exit 1; }
  for px in pass red; do
    out=$(taskset -c 0 wrk -t1 -c$CONNS -d${DUR}s --latency http://127.0.0.1:18180/$px/$doc)
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    mibs=$(awk '/Transfer\/sec/ {v=$2; if (v ~ /GB/) {sub("GB","",v); v*=1024} else if (v ~ /MB/) sub("MB","",v); else if (v ~ /KB/) {sub("KB","",v); v/=1024}; print v}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    errs=$(grep -c "Non-2xx\|Socket errors" <<<"$out" || true)
    printf '%-6s %-8s %10s %10s %9s%s\n' "${doc%.json}" "$px" "$rps" "$mibs" "$p50" "$([ "$errs" = 0 ] || echo '  (errors!)')"
  done
done
