#!/usr/bin/env bash
# Fleet-scale benchmark on the real local control plane (kwok nodes): nodewave
# side by side with the native DaemonSet controller, in one invocation on one
# cluster. Prints one table (numbers are measured, never asserted):
#   (a) native RollingUpdate (maxUnavailable M) vs nodewave with one stage "*"
#       and the same M, and the ratio; (b) the same with one stage per pool;
#       each ratio the median of paired runs (native, then nodewave) with the spread
#   (c) Kubernetes API requests per minute with 100 DaemonSets in sync and idle
#       (nodewave_kube_requests_total, and the API server's audit log of
#       nodewave's own user: lease renewals and watch re-establishments apart)
#   (d) nodewave's peak RSS (VmHWM), also with 20 managed DaemonSets on every node
#   (e) webhook -> first pod delete, over every nodewave run
# and where each rollout's time went (kwok, controller-manager, scheduler,
# nodewave's reaction, nodewave's requests from the audit log).
#
#   hack/bench-scale.sh [NODES] [fleet bench flags...]     (default 1000 nodes)
#   e.g. hack/bench-scale.sh 5000 --runs 3 --fleet-daemonsets 20
#
# nodewave is a release build with symbols stripped, as in the image (hack/image.sh). The cluster is
# NODEWAVE_BENCH_CLUSTER (default nw-bench), started and stopped here; output
# (table, JSON, nodewave's log) is kept in NODEWAVE_BENCH_OUT (default
# target/bench-scale). See `target/release/examples/fleet bench --help`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
nodes="${1:-1000}"
shift || true
read -r -a pools <<<"${NODEWAVE_POOLS:-pool-a pool-b pool-c}"
per_pool=$(((nodes + ${#pools[@]} - 1) / ${#pools[@]}))
export NODEWAVE_CLUSTER="${NODEWAVE_BENCH_CLUSTER:-nw-bench}" NODEWAVE_NODES_PER_POOL="$per_pool"
out="${NODEWAVE_BENCH_OUT:-target/bench-scale}"
mkdir -p "$out"
work="$(mktemp -d)"
cluster_up=""
cleanup() {
  # nodewave processes the driver started (it writes their pids next to their logs)
  for pidf in "$work"/*.pid; do
    [ -f "$pidf" ] && kill "$(cat "$pidf")" 2>/dev/null || true
  done
  # kept for (e)'s timeline: nodewave's requests and the DaemonSet controller's writes
  [ -n "${cluster_dir:-}" ] && [ -f "$cluster_dir/logs/audit.log" ] && cp "$cluster_dir/logs/audit.log" "$out/audit-$nodes.log"
  [ -n "$cluster_up" ] && hack/cluster.sh down >/dev/null 2>&1 || true
  [ -f "$work/nodewave.log" ] && cp "$work/nodewave.log" "$out/nodewave-$nodes.log"
  rm -rf "$work"
}
trap cleanup EXIT

# Only nodewave's own user is audited, so the log stays small at any fleet size.
cat >"$work/audit-policy.yaml" <<'YAML'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Metadata
    users: ["nodewave-bench"]
  # The DaemonSet controller's writes that nodewave waits for before a first
  # delete (the new revision, then the observed generation): few, and they
  # place (e)'s wait on the controller in time.
  - level: Metadata
    verbs: ["create", "update", "patch"]
    resources:
      - group: apps
        resources: [controllerrevisions, daemonsets/status]
  - level: None
YAML
export NODEWAVE_KUBE_AUDIT_POLICY="$work/audit-policy.yaml"
# 20 DaemonSets on every node need more pod IPs than the default /16.
[ $((nodes * 22)) -gt 60000 ] && export NODEWAVE_POD_CIDR=10.0.0.1/12
# kwok renews node leases a few at a time; past about 1,000 nodes a 40 s lease
# lapses while thousands of pods are created and nodes go NotReady (measured at
# 5,000 nodes). The lease grows with the fleet: 500 s at 5,000 nodes.
[ "$nodes" -gt 1000 ] && export NODEWAVE_NODE_LEASE_SECONDS=$((nodes / 10))

echo "building nodewave and the benchmark driver (release)"
# shellcheck source=lib/release-build.sh
source hack/lib/release-build.sh
cargo_release --quiet --bin nodewave --example fleet

t0=$SECONDS
cluster_up=1
hack/cluster.sh up >/dev/null
echo "cluster $NODEWAVE_CLUSTER with $((per_pool * ${#pools[@]})) Ready nodes up in $((SECONDS - t0))s"
cluster_dir="${KWOK_WORKDIR:-$HOME/.kwok}/clusters/$NODEWAVE_CLUSTER"

# nodewave runs as a user of its own (a client certificate signed by the
# cluster's CA), so the audit log tells its requests from everyone else's. The
# extensions make it an X.509 v3 certificate (rustls refuses v1).
openssl req -new -newkey rsa:2048 -nodes -keyout "$work/nodewave.key" \
  -subj "/CN=nodewave-bench/O=system:masters" -out "$work/nodewave.csr" 2>/dev/null
openssl x509 -req -in "$work/nodewave.csr" -CA "$cluster_dir/pki/ca.crt" -CAkey "$cluster_dir/pki/ca.key" \
  -CAcreateserial -CAserial "$work/ca.srl" -out "$work/nodewave.crt" -days 2 \
  -extfile <(printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n') 2>/dev/null
sed -e "s#client-certificate: .*#client-certificate: $work/nodewave.crt#" \
  -e "s#client-key: .*#client-key: $work/nodewave.key#" \
  "$cluster_dir/kubeconfig.yaml" >"$work/nodewave.kubeconfig"

target/release/examples/fleet bench --cluster "$NODEWAVE_CLUSTER" --nodewave target/release/nodewave \
  --work "$work" --nodewave-kubeconfig "$work/nodewave.kubeconfig" --json "$out/bench-$nodes.json" "$@" |
  tee "$out/bench-$nodes.txt"
