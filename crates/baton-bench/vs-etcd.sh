#!/usr/bin/env bash
# Runs the same election workloads against a three-member etcd cluster and
# a three-node Baton cluster on loopback, alternating between them workload
# by workload, for a few rounds, and prints one table with the medians and
# ratios. Installs etcd (Debian's etcd-server) if missing.
# Usage: crates/baton-bench/vs-etcd.sh [SECONDS_PER_WORKLOAD] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v etcd >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq etcd-server
fi
cargo build --release --locked --bin baton -p baton --bin baton-bench -p baton-bench
exec target/release/baton-bench compare \
    --baton-bin target/release/baton \
    --etcd-bin "$(command -v etcd)" \
    --secs "${1:-10}" \
    --rounds "${2:-3}"
