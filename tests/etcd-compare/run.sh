#!/usr/bin/env bash
# Understudy against etcd on this machine, one load generator: etcd's
# figures first, then the replication benchmark, which prints its ratios
# against them. Needs etcd and protoc (installed here if missing).
#
# ROUNDS=N (N > 1) alternates etcd and Understudy (writes only) N times and
# prints the median of each ratio: on a shared, noisy machine one pairing of
# runs can land anywhere within ±25 %.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v etcd >/dev/null || ! command -v protoc >/dev/null; then
    apt-get install -y etcd-server protobuf-compiler
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${TMPDIR:-/tmp}/understudy-target}"
rounds="${ROUNDS:-1}"
figures=$(mktemp)
ratios=$(mktemp)
trap 'rm -f "$figures" "$ratios"' EXIT
cargo build --release --quiet
cargo bench --manifest-path ../../Cargo.toml -p understudy --bench replication --no-run --quiet
if [ "$rounds" -le 1 ]; then
    ETCD_FIGURES="$figures" cargo run --release --quiet
    ETCD_FIGURES="$figures" cargo bench --manifest-path ../../Cargo.toml -p understudy --bench replication
    exit 0
fi
round_log=$(mktemp)
trap 'rm -f "$figures" "$ratios" "$round_log"' EXIT
for round in $(seq 1 "$rounds"); do
    echo "== round $round of $rounds"
    ETCD_FIGURES="$figures" cargo run --release --quiet
    ETCD_FIGURES="$figures" UNDERSTUDY_BENCH_CATCHUP=0 UNDERSTUDY_BENCH_READS=0 \
        cargo bench --manifest-path ../../Cargo.toml -p understudy --bench replication \
        >"$round_log" 2>/dev/null
    cat "$round_log"
    grep -E '× the throughput|single-client p50' "$round_log" >>"$ratios" || true
done
echo
echo "== medians over $rounds rounds"
# "statement: 64 client(s) ... 1.86× the throughput" and
# "statement: single-client p50 ... vs floor ...: 2.25× (bar ...)".
awk '
    { kind = $1; sub(/:$/, "", kind) }
    /× the throughput/ { match($0, /[0-9.]+× the throughput/); key = kind ", " $2 " client(s), throughput against etcd"; v[key] = v[key] " " substr($0, RSTART, RLENGTH - 17) }
    /single-client p50/ { match($0, /floor [0-9]+ µs: [0-9.]+×/); s = substr($0, RSTART, RLENGTH); sub(/.*: /, "", s); sub(/×/, "", s); key = kind ", single-client p50 against the floor"; v[key] = v[key] " " s }
    END { for (k in v) print k "|" v[k] }
' "$ratios" | sort | while IFS='|' read -r key values; do
    median=$(echo "$values" | tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }')
    echo "$key: median ${median}× (rounds:$values)"
done
