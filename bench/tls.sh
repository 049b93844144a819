#!/usr/bin/env bash
# bench/tls.sh — TLS beside nginx, on loopback, in the anchors harness's "pin" layout: the load
# generator (wrk -t1) and the upstream (nginx, 1 worker, plain HTTP, a 1 KiB answer) on CPU 0,
# the proxy under test (nginx or portcullis, 1 worker) alone on CPU 1. Both proxies terminate
# TLS with the same ECDSA P-256 certificate (TLS 1.3, no session resumption: wrk never resumes)
# and keep upstream connections alive. Cases:
#   tls_keepalive : GET 1 KiB over TLS on CONNS keep-alive connections (req/s, proxy CPU µs/req)
#   tls_handshake : a new connection and a full handshake per request (`Connection: close`)
#   intercept     : added latency of a call through a kept CONNECT tunnel that portcullis
#                   intercepts (leaf minted from the interception CA), against the same calls
#                   sent straight to the TLS upstream on one kept connection (p50/p99, µs)
# Every run is bounded (DUR seconds, N calls). Uses the dist build (cargo build --profile dist).
#   bash bench/tls.sh            # DUR=6 REPS=2 CONNS=64 N=2000
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
DUR=${DUR:-6} REPS=${REPS:-2} CONNS=${CONNS:-64} N=${N:-2000}
bin=${PORTCULLIS_BIN:-$root/target/dist/portcullis}
[ -x "$bin" ] || cargo build --profile dist --manifest-path "$root/Cargo.toml"
for c in wrk nginx openssl taskset python3; do
  command -v "$c" >/dev/null || { echo "bench/tls.sh needs $c" >&2; exit 2; }
done
P_UP=18180 P_UPTLS=18181 P_NGX=18182 P_PCS=18183 P_FWD=18184
T=$(mktemp -d /tmp/pcs-tls-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do stop "$p"; done; rm -rf "$T"; }
trap cleanup EXIT

# one certificate for both proxies (and the TLS upstream): CA + leaf for localhost/127.0.0.1
openssl ecparam -name prime256v1 -genkey -noout -out "$T/ca.key" 2>/dev/null
openssl req -x509 -new -key "$T/ca.key" -subj "/CN=bench CA" -days 2 -out "$T/ca.pem" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$T/leaf.key.ec" 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in "$T/leaf.key.ec" -out "$T/leaf.key"
openssl req -new -key "$T/leaf.key" -subj "/CN=localhost" -out "$T/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$T/ext"
openssl x509 -req -in "$T/leaf.csr" -CA "$T/ca.pem" -CAkey "$T/ca.key" -CAcreateserial -days 2 \
  -extfile "$T/ext" -out "$T/leaf.pem" 2>/dev/null
# the interception CA portcullis mints from
"$bin" ca init --out "$T/ica" >/dev/null

BODY1K=$(head -c 1024 /dev/zero | tr '\0' 'a')
nginx_conf() { # $1 dir, $2 server blocks
  mkdir -p "$1/tmp"
  cat >"$1/nginx.conf" <<EOF
user root; daemon off; master_process on; worker_processes 1;
pid $1/nginx.pid; error_log $1/error.log warn; worker_rlimit_nofile 65536;
events { worker_connections 16384; }
http {
  access_log off; client_body_temp_path $1/tmp/b; proxy_temp_path $1/tmp/p;
  fastcgi_temp_path $1/tmp/f; uwsgi_temp_path $1/tmp/u; scgi_temp_path $1/tmp/s;
  keepalive_requests 100000000; keepalive_timeout 300s; tcp_nodelay on;
  types { } default_type application/octet-stream;
$2
}
EOF
}
start() { # $1 cpu, rest: command; echoes the pid
  taskset -c "$1" "${@:2}" >"$T/log.$RANDOM" 2>&1 &
  echo $!
}
stop() { kill -TERM "$1" 2>/dev/null || true; for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; exit 1; }

nginx_conf "$T/up" "
  server { listen 127.0.0.1:$P_UP; location = / { default_type text/plain; return 200 \"$BODY1K\"; } }
  server { listen 127.0.0.1:$P_UPTLS ssl; ssl_certificate $T/leaf.pem; ssl_certificate_key $T/leaf.key;
           location = / { default_type text/plain; return 200 \"$BODY1K\"; } }"
pids+=("$(start 0 nginx -c "$T/up/nginx.conf")")
wait_port $P_UP; wait_port $P_UPTLS

nginx_conf "$T/ngx" "
  upstream up { server 127.0.0.1:$P_UP; keepalive 256; keepalive_requests 100000000; keepalive_timeout 300s; }
  server { listen 127.0.0.1:$P_NGX ssl; ssl_certificate $T/leaf.pem; ssl_certificate_key $T/leaf.key;
           ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache off; ssl_session_tickets off;
           location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"

cat >"$T/pcs.toml" <<EOF
[server]
listen = ["127.0.0.1:$P_PCS"]
workers = 1
default_proxy = "up"
tls = { cert = "file:$T/leaf.pem", key = "file:$T/leaf.key" }

[[proxies]]
name = "up"
upstream = "http://127.0.0.1:$P_UP"
default_effect = "allow"
EOF
cat >"$T/fwd.toml" <<EOF
[server]
listen = ["127.0.0.1:$P_FWD"]
workers = 1

[forward]
ca = { cert = "file:$T/ica/ca.pem", key = "file:$T/ica/ca.key" }

[[proxies]]
name = "tlsup"
upstream = "https://localhost:$P_UPTLS"
ca_file = "$T/ca.pem"
default_effect = "allow"
EOF

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
# wrk_run NAME PID URL [extra wrk args]: prints "name rps cpu_us_per_req errors"
wrk_run() {
  local name=$1 pid=$2 url=$3; shift 3
  local c0 c1 out rps reqs errs
  c0=$(cpu_ticks "$pid")
  out=$(taskset -c 0 wrk -t1 -c "$CONNS" -d "${DUR}s" "$@" "$url" 2>&1)
  c1=$(cpu_ticks "$pid")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  errs=$( (grep -E "Socket errors|Non-2xx" <<<"$out" || true) | tr '\n' ' ')
  awk -v n="$name" -v r="$rps" -v q="$reqs" -v d=$((c1 - c0)) -v hz="$HZ" -v e="$errs" \
    'BEGIN { printf "%-28s %10.0f req/s  %7.1f µs CPU/req  %s\n", n, r, (q > 0 ? d * 1e6 / hz / q : 0), e }'
}

echo "# bench/tls.sh $(date -u +%FT%TZ) $(uname -srm), $(nproc) cores; portcullis $(git -C "$root" rev-parse --short HEAD)"
echo "# DUR=$DUR REPS=$REPS CONNS=$CONNS N=$N; proxy on CPU 1, wrk + upstream on CPU 0"
for case in keepalive handshake; do
  args=()
  [ "$case" = handshake ] && args=(-H "Connection: close")
  for rep in $(seq 1 "$REPS"); do
    ngx=$(start 1 nginx -c "$T/ngx/nginx.conf"); wait_port $P_NGX
    wrk_run "tls_$case nginx #$rep" "$(pgrep -P "$ngx" nginx | head -1 || echo "$ngx")" "https://127.0.0.1:$P_NGX/" "${args[@]}"
    stop "$ngx"
    pcs=$(PORTCULLIS_LOG=warn start 1 "$bin" run -c "$T/pcs.toml"); wait_port $P_PCS
    wrk_run "tls_$case portcullis #$rep" "$pcs" "https://127.0.0.1:$P_PCS/" "${args[@]}"
    stop "$pcs"
  done
done

# intercept: N sequential calls on one kept connection, straight to the TLS upstream and then
# through a kept CONNECT tunnel that portcullis intercepts; everything on CPU 0 but the gateway
fwd=$(PORTCULLIS_LOG=warn start 1 "$bin" run -c "$T/fwd.toml"); pids+=("$fwd"); wait_port $P_FWD
taskset -c 0 python3 - "$T" "$P_UPTLS" "$P_FWD" "$N" <<'PY'
import http.client, ssl, sys, time
d, up, fwd, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def run(conn, ctx_note):
    lat = []
    for i in range(n + 100):
        t = time.perf_counter_ns()
        conn.request("GET", "/", headers={"Host": f"localhost:{up}"})
        r = conn.getresponse(); body = r.read()
        assert r.status == 200 and len(body) == 1024, (r.status, len(body))
        if i >= 100:
            lat.append((time.perf_counter_ns() - t) / 1000)
    lat.sort()
    return lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
direct_ctx = ssl.create_default_context(cafile=f"{d}/ca.pem")
c = http.client.HTTPSConnection("localhost", up, context=direct_ctx)
d50, d99 = run(c, "direct")
icx = ssl.create_default_context(cafile=f"{d}/ica/ca.pem")
c = http.client.HTTPSConnection("127.0.0.1", fwd, context=icx)
c.set_tunnel("localhost", up)
i50, i99 = run(c, "intercept")
print(f"intercept: direct TLS p50 {d50:.0f} µs p99 {d99:.0f} µs; through the intercepted tunnel p50 {i50:.0f} µs p99 {i99:.0f} µs; added p50 {i50 - d50:.0f} µs, p99 {i99 - d99:.0f} µs ({n} calls each)")
PY
