#!/usr/bin/env bash
# The cost of the audit trail's durability modes (issue 13): nginx serves 1 KiB on CPU 0 with
# wrk; portcullis (1 worker) runs alone on CPU 1 with its audit directory on the disk under
# $AUDIT_BASE (default /var/tmp: a real filesystem, so fdatasync costs what it costs there).
# Modes: `off` (no [audit]), `1s` (the default fsync), `always` (fsync = "always", records
# written after the response), `durable` (fsync = "always" + on_error = "refuse": each record
# is fdatasync'ed before its response head is released). For each: 1 connection (latency)
# and CONNS connections (throughput); every run's trail must verify.
#   bash bench/audit-durable.sh            # DUR=6 CONNS=16
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${PORTCULLIS_BIN:-$root/target/dist/portcullis}
DUR=${DUR:-6}
CONNS=${CONNS:-16}
AUDIT_BASE=${AUDIT_BASE:-/var/tmp}
[ -x "$bin" ] || cargo build --profile dist --manifest-path "$root/Cargo.toml"
command -v wrk >/dev/null && command -v nginx >/dev/null || {
  apt-get update -q && apt-get install -y -q wrk nginx-light >/dev/null; }
T=$(mktemp -d /tmp/audit-bench.XXXXXX)
A=$(mktemp -d "$AUDIT_BASE/audit-bench.XXXXXX")
PX=
trap 'kill $(cat $T/nginx.pid 2>/dev/null) $PX 2>/dev/null || true; rm -rf $T $A' EXIT
head -c 1024 /dev/zero | tr '\0' x >$T/1k
mkdir -p $T/tmp
cat >$T/nginx.conf <<NG
worker_processes 1; daemon on; pid $T/nginx.pid; error_log $T/error.log warn; user root;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $T/tmp; proxy_temp_path $T/tmp; fastcgi_temp_path $T/tmp;
  uwsgi_temp_path $T/tmp; scgi_temp_path $T/tmp; keepalive_requests 100000000; keepalive_timeout 300s;
  server { listen 127.0.0.1:18191; root $T; } }
NG
taskset -c 0 nginx -c $T/nginx.conf
echo "# $(date -u +%FT%TZ) $(git -C "$root" rev-parse --short HEAD) audit dir on: $(df --output=source,fstype "$A" | tail -1)"
printf '%-8s %5s %10s %9s %9s\n' mode conns req/s p50 p99
for mode in off 1s always durable; do
  audit=""
  case $mode in
    1s) audit=$'[audit]\ndir = "'$A/$mode$'"\nfsync = "1s"' ;;
    always) audit=$'[audit]\ndir = "'$A/$mode$'"\nfsync = "always"' ;;
    durable) audit=$'[audit]\ndir = "'$A/$mode$'"\nfsync = "always"\non_error = "refuse"' ;;
  esac
  cat >$T/p.toml <<TOML
[server]
listen = ["127.0.0.1:18190"]
workers = 1
$audit
[[proxies]]
name = "up"
upstream = "http://127.0.0.1:18191"
default_effect = "allow"
TOML
  PORTCULLIS_LOG=warn taskset -c 1 "$bin" run -c $T/p.toml & PX=$!
  for _ in $(seq 50); do curl -sf localhost:18190/up/1k >/dev/null && break; sleep 0.1; done
  for c in 1 $CONNS; do
    out=$(taskset -c 0 wrk -t1 -c$c -d${DUR}s --latency http://127.0.0.1:18190/up/1k)
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    errs=$(grep -c "Non-2xx\|Socket errors" <<<"$out" || true)
    printf '%-8s %5s %10s %9s %9s%s\n' $mode $c "$rps" "$p50" "$p99" "$([ "$errs" = 0 ] || echo '  (errors!)')"
  done
  kill $PX; wait $PX 2>/dev/null || true; PX=
  if [ -n "$audit" ]; then
    "$bin" audit verify "$A/$mode" >/dev/null || { echo "$mode: the trail does not verify" >&2; exit 1; }
  fi
done
