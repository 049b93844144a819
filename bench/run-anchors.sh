#!/usr/bin/env bash
# Builds portcullis (dist profile) and runs the loopback harness (bench/anchors.sh, a copy of the
# shared harness the project is measured with; ANCHORS=path runs another copy)
# with portcullis as the EXTRA proxy, so every portcullis figure is a ratio to direct / nginx /
# HAProxy (/ Envoy) from the same run. Results land in bench/results/DATE-HOST/.
#   bash bench/run-anchors.sh               # full run (~20 min)
#   QUICK=1 bash bench/run-anchors.sh       # 2 s smoke run
# Any anchors.sh knob passes through (DUR, REPS, WITH_ENVOY, WITH_RATE, ONLY, ...).
# The run fails if portcullis answered any request with an error or a non-2xx status.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
anchors=${ANCHORS:-$root/bench/anchors.sh}
[ -f "$anchors" ] || { echo "anchors harness not found at $anchors (set ANCHORS=)" >&2; exit 2; }
cargo build --profile dist --manifest-path "$root/Cargo.toml"
out="$root/bench/results/$(date -u +%Y-%m-%d)-$(hostname -s)"
mkdir -p "$out"
export EXTRA_NAME=portcullis
export EXTRA_CMD="$root/bench/portcullis-anchor.sh {PORT} {UP} {W}"
export RESULTS="$out/anchors.tsv"
{
  echo "# $(date -u +%FT%TZ) $(uname -srm), $(nproc) cores"
  echo "# portcullis $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet || echo -dirty)"
  echo "# command: $0 $* (QUICK=${QUICK:-0} DUR=${DUR:-} REPS=${REPS:-} WITH_ENVOY=${WITH_ENVOY:-} WITH_RATE=${WITH_RATE:-})"
} >"$out/summary.txt"
bash "$anchors" 2>&1 | tee -a "$out/summary.txt"
# Benches prove their answer: every portcullis request must have been answered 2xx without error.
bad=$(awk -F'\t' '$3 ~ /^portcullis/ && $1 != "mem" && ($12 != "0" && $12 != "-" || $13 != "0" && $13 != "-") {print}' "$RESULTS")
if [ -n "$bad" ]; then
  echo "portcullis runs with errors or non-2xx answers:" >&2
  echo "$bad" >&2
  exit 1
fi
echo "results: $out"
