#!/usr/bin/env bash
# Property-based fuzzing of the HTTP API from its OpenAPI document
# (docs/openapi.json) with schemathesis (PyPI): a local three-node group
# (`understudy dev` on free ports) takes every operation with generated
# valid and invalid input, and every answer must be other than a 5xx
# (the `not_a_server_error` check). Prints schemathesis' summary (its
# counts of operations, test cases and failures) and exits non-zero on
# any failure.
#
#   bash scripts/fuzz-http.sh            # 120 s budget
#   FUZZ_SECONDS=600 bash scripts/fuzz-http.sh
#
# schemathesis is installed into a virtualenv under
# ${UNDERSTUDY_TOOLS:-~/.cache/understudy-tools} the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${TMPDIR:-/tmp}/understudy-target}"

tools="${UNDERSTUDY_TOOLS:-$HOME/.cache/understudy-tools}"
venv="$tools/venv"
if ! [ -x "$venv/bin/schemathesis" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'schemathesis>=4.30,<5'
fi
"$venv/bin/schemathesis" --version

cargo build -q -p understudy --locked
bin="$CARGO_TARGET_DIR/debug/understudy"

# A free client-port base: dev uses base..base+2 (client), +100 (peer),
# +200 (HTTP).
base=$(python3 -c 'import random; print(random.randrange(20000, 40000, 10))')
http="http://127.0.0.1:$((base + 200))"
dir=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
"$bin" dev --data-dir "$dir/dev" --listen "127.0.0.1:$base" >"$dir/dev.log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do
    if curl -sf "$http/v1/cluster" 2>/dev/null | grep -q '"role":"leader"'; then
        break
    fi
    sleep 0.5
done
curl -sf "$http/v1/status" >/dev/null || { cat "$dir/dev.log"; echo "fuzz-http: the dev group did not start" >&2; exit 1; }

status=0
# Hooks: a serializer for the deploy route's application/wasm body.
export SCHEMATHESIS_HOOKS=fuzz_hooks
export PYTHONPATH="$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}"
"$venv/bin/schemathesis" run docs/openapi.json \
    --url "$http" \
    --checks not_a_server_error \
    --max-time "${FUZZ_SECONDS:-120}" \
    --workers 2 \
    --continue-on-failure \
    --no-color \
    "$@" || status=$?
# The group must still answer after the run.
curl -sf "$http/v1/status" >/dev/null || { echo "fuzz-http: the node stopped answering" >&2; status=1; }
exit "$status"
