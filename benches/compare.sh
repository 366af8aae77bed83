#!/usr/bin/env bash
# Side-by-side load comparison: direct upstream, HAProxy, nginx and cutover, measured in
# one run with targets alternating, on loopback only. Not part of CI.
#
#   bash benches/compare.sh                # ~4.5 minutes on 2 cores
#   DURATION=5 ROUNDS=2 FIXED_DURATION=2 FIXED_ROUNDS=3 bash benches/compare.sh
#   CANARY=10 bash benches/compare.sh      # cutover with a 10 % canary split on
#   bash benches/compare.sh --instructions   # user-space instructions/request (callgrind), HTTP/1.1 and h2c, ~2 min
#   bash benches/compare.sh --edge     # h2c, new connections, TLS, 1 MiB bodies, switching, 10k idle (~15 min)
#   EDGE_DURATION=2 EDGE_ROUNDS=1 bash benches/compare.sh --edge   # its quick mode, ~1 min
#
# Installs haproxy, nginx, wrk (and h2load for --edge) from Debian when missing, builds cutover and the
# open-loop load generator in release mode, then runs benches/compare.py.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v nginx >/dev/null || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
command -v taskset >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
if [ "${1:-}" = "--instructions" ]; then
    command -v valgrind >/dev/null || need+=(valgrind)
    command -v h2load >/dev/null || need+=(nghttp2-client)
fi
if [ "${1:-}" = "--edge" ]; then
    command -v h2load >/dev/null || need+=(nghttp2-client)
    command -v openssl >/dev/null || need+=(openssl)
fi
if [ "${#need[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
fi

cargo build --release --locked --bin cutover --example loadgen
ulimit -n "$(ulimit -Hn)"
if [ "${1:-}" = "--instructions" ]; then
    exec python3 benches/instructions.py
fi
if [ "${1:-}" = "--edge" ]; then
    exec python3 benches/edge.py
fi
exec python3 benches/compare.py "$@"
