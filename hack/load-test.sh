#!/usr/bin/env bash
# HTTP load test of nodewave's webhook listener, loopback only, bounded in
# count and time. Starts its own local cluster (unless one of that name is
# already running, which it then leaves running), a file:// repository with
# one DaemonSet, and nodewave with split listeners; then hack/load-test.py
# sends a flood of valid signed webhooks, invalid ones, replays and slow-loris /
# slow-body clients, and reports fetches performed vs webhooks sent, slow
# connections cut, /metrics latency on the metrics listener, commit -> rollout
# times without and under load, and nodewave's peak RSS (VmHWM).
# Numbers are measured, never asserted by the test suite.
#
#   hack/load-test.sh [DURATION_SECONDS]    (default 30)
#
# Settings (environment): NODEWAVE_CLUSTER (default nw-load),
# LOAD_THREADS (valid-webhook senders, default 6), LOAD_MAX_VALID (default
# 100000), LOAD_SLOW_LORIS (default 20), LOAD_SLOW_BODY (default 10),
# NODEWAVE_BIN (default: target/debug/nodewave, built first).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
duration="${1:-30}"
export NODEWAVE_CLUSTER="${NODEWAVE_CLUSTER:-nw-load}" NODEWAVE_NODES_PER_POOL="${NODEWAVE_NODES_PER_POOL:-2}"
header_timeout=2s request_timeout=5s coalesce=5s max_conn=64
work="$(mktemp -d)"
nw_pid=""
started_cluster=""
cleanup() {
  if [ -n "$nw_pid" ]; then
    kill "$nw_pid" 2>/dev/null || true
    wait "$nw_pid" 2>/dev/null || true
  fi
  [ -n "$started_cluster" ] && hack/cluster.sh down >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

if [ -n "${NODEWAVE_BIN:-}" ]; then
  bin="$NODEWAVE_BIN"
else
  cargo build --quiet --bin nodewave
  bin=target/debug/nodewave
fi
kubeconfig="${KWOK_WORKDIR:-$HOME/.kwok}/clusters/$NODEWAVE_CLUSTER/kubeconfig.yaml"
kubectl_bin="$(hack/build-binaries.sh 2>/dev/null | tail -n1)/kubectl"
if [ -f "$kubeconfig" ] && "$kubectl_bin" --kubeconfig "$kubeconfig" get --raw /readyz >/dev/null 2>&1; then
  echo "using the running cluster $NODEWAVE_CLUSTER (left running)"
else
  started_cluster=yes
  hack/cluster.sh up >/dev/null
fi
export KUBECONFIG="$kubeconfig"
ns="load-$$"
"$kubectl_bin" create namespace "$ns" >/dev/null

repo="$work/repo"
mkdir -p "$repo"
git -C "$repo" init -q -b main
cat >"$repo/agent.yaml" <<YAML
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: $ns}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers:
        - name: agent
          image: registry.example/agent:1.0.0
          resources: {requests: {cpu: 10m, memory: 16Mi}, limits: {cpu: 100m, memory: 64Mi}}
          readinessProbe: {httpGet: {path: /ready, port: 8080}}
          livenessProbe: {httpGet: {path: /live, port: 8080}}
YAML
git -C "$repo" add -A
git -C "$repo" -c user.name=load -c user.email=load@nodewave.invalid commit -qm "agent 1.0.0"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
hook_port=$(free_port)
metrics_port=$(free_port)
secret="load-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
printf '%s\n' "$secret" >"$work/secret"
"$bin" run --repo "file://$repo" --state-dir "$work/state" --allow-namespace "$ns" \
  --listen "127.0.0.1:$hook_port" --metrics-listen "127.0.0.1:$metrics_port" \
  --webhook-secret-file "$work/secret" --poll-interval 1h --rollout-interval 1s \
  --http-header-timeout "$header_timeout" --http-request-timeout "$request_timeout" \
  --http-max-connections "$max_conn" --webhook-coalesce-window "$coalesce" \
  --log-format json >"$work/nodewave.log" 2>&1 &
nw_pid=$!

deadline=$((SECONDS + 120))
until curl -sf "127.0.0.1:$metrics_port/readyz" >/dev/null; do
  kill -0 "$nw_pid" 2>/dev/null || { echo "nodewave exited:"; tail -20 "$work/nodewave.log"; exit 1; }
  [ $SECONDS -lt $deadline ] || { echo "nodewave not ready in 120s:"; tail -20 "$work/nodewave.log"; exit 1; }
  sleep 0.5
done
until [ "$("$kubectl_bin" -n "$ns" get ds agent -o jsonpath='{.metadata.annotations.nodewave\.io/sync-status}' 2>/dev/null)" = Synced ]; do
  [ $SECONDS -lt $deadline ] || { echo "first rollout not Synced in 120s"; tail -20 "$work/nodewave.log"; exit 1; }
  sleep 0.5
done
echo "nodewave ready: webhook listener 127.0.0.1:$hook_port, metrics listener 127.0.0.1:$metrics_port"

secs() { echo "${1%s}"; }
rc=0
timeout $((duration * 4 + 240)) python3 hack/load-test.py \
  --webhook-port "$hook_port" --metrics-port "$metrics_port" --secret "$secret" \
  --pid "$nw_pid" --repo "$repo" --kubectl "$kubectl_bin" --namespace "$ns" \
  --duration "$duration" --threads "${LOAD_THREADS:-6}" --max-valid "${LOAD_MAX_VALID:-100000}" \
  --slow-loris "${LOAD_SLOW_LORIS:-20}" --slow-body "${LOAD_SLOW_BODY:-10}" \
  --header-timeout "$(secs $header_timeout)" --request-timeout "$(secs $request_timeout)" \
  --coalesce-window "$(secs $coalesce)" || rc=$?
cpu=$(awk '{printf "%.1f", ($14 + $15) / 100}' "/proc/$nw_pid/stat")
mkdir -p target/load-test && cp "$work/nodewave.log" target/load-test/nodewave.log
echo "webhook decisions (from the log): $(grep -o '"decision":"[a-z_]*"' "$work/nodewave.log" | sort | uniq -c | tr -s ' \n' ' ')"
echo "nodewave log kept in target/load-test/nodewave.log"
echo "nodewave CPU time over the whole run: ${cpu}s; log lines: $(wc -l <"$work/nodewave.log")"
echo "'webhook refused' log lines: $(grep -c 'webhook refused' "$work/nodewave.log" || true)"
"$kubectl_bin" delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
exit "$rc"
