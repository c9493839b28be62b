#!/usr/bin/env bash
# Understudy against etcd on this machine, one session, one load generator:
# etcd's figures first, then the replication benchmark, which prints its
# ratios against them. Needs etcd and protoc (installed here if missing).
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v etcd >/dev/null || ! command -v protoc >/dev/null; then
    apt-get install -y etcd-server protobuf-compiler
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${TMPDIR:-/tmp}/understudy-target}"
figures=$(mktemp)
trap 'rm -f "$figures"' EXIT
ETCD_FIGURES="$figures" cargo run --release
ETCD_FIGURES="$figures" cargo bench --manifest-path ../../Cargo.toml -p understudy --bench replication
