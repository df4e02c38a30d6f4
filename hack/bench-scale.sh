#!/usr/bin/env bash
# Scale benchmark against the real local control plane: one DaemonSet on
# thousands of fake nodes, a rollout across 3 pools, measured end to end.
# Prints the rollout's duration, nodewave's peak memory (VmHWM) and CPU time,
# and the Kubernetes API requests it made. Not part of the test suite: numbers
# are measured, never asserted.
#
#   hack/bench-scale.sh [NODES_PER_POOL]     (default 334 -> 1002 nodes)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
per_pool="${1:-334}"
export NODEWAVE_CLUSTER=nodewave-scale NODEWAVE_NODES_PER_POOL="$per_pool"
work="$(mktemp -d)"
nw_pid=""
cleanup() {
  [ -n "$nw_pid" ] && kill "$nw_pid" 2>/dev/null || true
  hack/cluster.sh down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --quiet
bin="target/release/nodewave"
t0=$SECONDS
hack/cluster.sh up >/dev/null
eval "$(hack/cluster.sh env)"
export KUBECONFIG
nodes=$((per_pool * 3))
echo "cluster with $nodes Ready nodes up in $((SECONDS - t0))s"
kubectl_bin="$(dirname "$(hack/build-binaries.sh 2>/dev/null | tail -n1)/x")/kubectl"
"$kubectl_bin" create namespace bench >/dev/null

repo="$work/repo"
mkdir -p "$repo"
git -C "$repo" init -q -b main
manifest() {
  cat <<YAML
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: bench}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers:
        - name: agent
          image: registry.example/agent:$1
          resources: {requests: {cpu: 10m, memory: 16Mi}, limits: {cpu: 100m, memory: 64Mi}}
          readinessProbe: {httpGet: {path: /ready, port: 8080}}
          livenessProbe: {httpGet: {path: /live, port: 8080}}
---
apiVersion: nodewave.io/v1alpha1
kind: RolloutPolicy
metadata: {name: agent, namespace: bench}
spec:
  target: {name: agent}
  stages:
    - {name: canary, pools: [pool-a], nodes: 3, maxUnavailable: 1}
    - {name: pool-a, pools: [pool-a], maxUnavailable: 20%}
    - {name: rest, pools: ["*"], maxUnavailable: 20%}
YAML
}
commit() {
  manifest "$1" >"$repo/agent.yaml"
  git -C "$repo" add -A
  git -C "$repo" -c user.name=bench -c user.email=bench@nodewave.invalid commit -qm "agent $1"
}
commit 1.0.0
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" run --repo "file://$repo" --listen "127.0.0.1:$port" --state-dir "$work/state" \
  --poll-interval 1s --rollout-interval 1s --log-format json >"$work/nodewave.log" 2>&1 &
nw_pid=$!

status() { "$kubectl_bin" -n bench get ds agent -o jsonpath='{.metadata.annotations.nodewave\.io/sync-status}' 2>/dev/null || true; }
wait_synced() {
  local deadline=$((SECONDS + $1))
  while [ "$(status)" != "Synced" ] || [ "$("$kubectl_bin" -n bench get ds agent -o jsonpath='{.metadata.annotations.nodewave\.io/applied-commit}')" != "$(git -C "$repo" rev-parse HEAD)" ]; do
    [ $SECONDS -lt $deadline ] || { echo "timed out; last log lines:"; tail -5 "$work/nodewave.log"; exit 1; }
    sleep 1
  done
}
t0=$SECONDS
wait_synced 600
echo "created DaemonSet on $nodes nodes: Synced after $((SECONDS - t0))s"

commit 1.1.0
t0=$SECONDS
wait_synced 1800
rollout=$((SECONDS - t0))
ready=$("$kubectl_bin" -n bench get ds agent -o jsonpath='{.status.numberReady}')
echo "rolled out 1.1.0 to $ready/$nodes pods in 3 stages: ${rollout}s"
hwm=$(awk '/VmHWM/ {print $2, $3}' "/proc/$nw_pid/status")
cpu=$(awk '{printf "%.1f", ($14 + $15) / 100}' "/proc/$nw_pid/stat")
reqs=$(curl -s "127.0.0.1:$port/metrics" | awk '/^nodewave_kube_requests_total/ {s += $2} END {print s}')
echo "nodewave peak RSS: $hwm; CPU time: ${cpu}s; Kubernetes API requests: $reqs"
