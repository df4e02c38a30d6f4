#!/usr/bin/env bash
# Chaos run on the real local control plane: TRIALS staged rollouts of one
# DaemonSet (12 kwok nodes in 3 pools: a 1-node canary, the rest of pool-a,
# then everything else; a fifth of the commits crash-loop and must roll back)
# while a driver SIGKILLs nodewave, SIGSTOPs/SIGCONTs kube-controller-manager,
# restarts kube-apiserver and flips leadership between two --leader-elect
# replicas at random moments. A watcher checks every observed pod state and
# record write against the rollout invariants (budget per stage, stage order,
# nothing of a later stage replaced early, never Synced early, every rollout
# ends on one revision Synced or RolledBack, no pod of a failed commit left).
# Prints trials run, invariant violations and the slowest recovery; exits 1 on
# any violation. Bounded: no trial starts after --minutes (default 60).
#
#   hack/chaos.sh [TRIALS] [fleet chaos flags...]    (default 100)
#   e.g. hack/chaos.sh 5 --minutes 3 --seed 42
#
# NODEWAVE_CHAOS_PROFILE=debug uses the debug build (what hack/test.sh has
# built already) instead of a release build. The cluster is
# NODEWAVE_CHAOS_CLUSTER (default nw-chaos), started and stopped here; the
# driver's output and nodewave's logs are kept in NODEWAVE_CHAOS_OUT
# (default target/chaos).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
trials="${1:-100}"
shift || true
export NODEWAVE_CLUSTER="${NODEWAVE_CHAOS_CLUSTER:-nw-chaos}" NODEWAVE_NODES_PER_POOL=4
unset NODEWAVE_POOLS
profile="${NODEWAVE_CHAOS_PROFILE:-release}"
out="${NODEWAVE_CHAOS_OUT:-target/chaos}"
mkdir -p "$out"
work="$(mktemp -d)"
cluster_up=""
cleanup() {
  for pidf in "$work"/*.pid; do
    [ -f "$pidf" ] && kill "$(cat "$pidf")" 2>/dev/null || true
  done
  # A driver interrupted mid-fault may leave the controller-manager stopped;
  # the cluster goes down anyway.
  [ -n "$cluster_up" ] && hack/cluster.sh down >/dev/null 2>&1 || true
  cp "$work"/nodewave-*.log "$out/" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

if [ "$profile" = release ]; then
  # shellcheck source=lib/release-build.sh
  source hack/lib/release-build.sh
  cargo_release --quiet --bin nodewave --example fleet
else
  cargo build --quiet --bin nodewave --example fleet
fi
cluster_up=1
hack/cluster.sh up >/dev/null
"target/$profile/examples/fleet" chaos --cluster "$NODEWAVE_CLUSTER" --nodewave "target/$profile/nodewave" \
  --work "$work" --trials "$trials" "$@" | tee "$out/chaos-$trials.txt"
