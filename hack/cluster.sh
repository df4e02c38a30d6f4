#!/usr/bin/env bash
# nodewave's local Kubernetes control plane: real etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler, with kwok faking nodes and kubelets.
# Everything runs as plain processes bound to 127.0.0.1 (kwokctl's binary runtime).
#
#   hack/cluster.sh up       build binaries if needed, start the cluster, create nodes
#   hack/cluster.sh down     stop every process and delete the cluster's files
#   hack/cluster.sh status   show components and nodes
#   hack/cluster.sh env      print the export line for KUBECONFIG
#
# Settings (environment):
#   NODEWAVE_CLUSTER        cluster name                      (default: nodewave)
#   NODEWAVE_POOLS          space-separated node pool names   (default: "pool-a pool-b pool-c")
#   NODEWAVE_NODES_PER_POOL fake nodes per pool               (default: 3)
#   NODEWAVE_POOL_LABEL     node label naming the pool        (default: nodewave.io/pool)
#   NODEWAVE_POD_CIDR       kwok's pod IP range                (default: 10.0.0.1/16, 65,534 pods)
#   NODEWAVE_KUBE_AUDIT_POLICY  kube-apiserver audit policy file; the log is
#                           <cluster dir>/logs/audit.log      (default: no audit log)
#   NODEWAVE_NODE_LEASE_SECONDS  kwok's node lease duration; when set, the
#                           controller-manager's node-monitor-grace-period is
#                           twice it, so thousands of fake nodes whose leases
#                           kwok renews slowly stay Ready (default: 40, and
#                           kwokctl's grace period, 200 s)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

name="${NODEWAVE_CLUSTER:-nodewave}"
pools="${NODEWAVE_POOLS:-pool-a pool-b pool-c}"
per_pool="${NODEWAVE_NODES_PER_POOL:-3}"
pool_label="${NODEWAVE_POOL_LABEL:-nodewave.io/pool}"
audit_policy="${NODEWAVE_KUBE_AUDIT_POLICY:-}"
pod_cidr="${NODEWAVE_POD_CIDR:-10.0.0.1/16}"
node_lease="${NODEWAVE_NODE_LEASE_SECONDS:-}"
kwok_home="${KWOK_WORKDIR:-$HOME/.kwok}"
cluster_dir="$kwok_home/clusters/$name"
kubeconfig="$cluster_dir/kubeconfig.yaml"

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

bin_dir() {
  "$here/build-binaries.sh" | tail -n 1
}

write_config() {
  local bin="$1" out="$2"
  {
    cat <<CFG
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  runtime: binary
  bindAddress: 127.0.0.1
  kubeApiserverCertSANs: ["127.0.0.1", "localhost"]
  kubeApiserverBinary: $bin/kube-apiserver
  kubeControllerManagerBinary: $bin/kube-controller-manager
  kubeSchedulerBinary: $bin/kube-scheduler
  kubectlBinary: $bin/kubectl
  etcdBinary: $bin/etcd
  kwokControllerBinary: $bin/kwok
  kubeVersion: $(. "$here/versions.env"; echo "$KUBE_VERSION")
  etcdVersion: $(. "$here/versions.env"; echo "${ETCD_VERSION#v}")
  kwokVersion: $(. "$here/versions.env"; echo "$KWOK_VERSION")
  quietPull: true
  disableQPSLimits: true
  nodeLeaseDurationSeconds: ${node_lease:-40}
CFG
    # hack/bench-scale.sh counts nodewave's own requests in the audit log.
    [ -n "$audit_policy" ] && echo "  kubeAuditPolicy: $(cd "$(dirname "$audit_policy")" && pwd)/$(basename "$audit_policy")"
    cat <<CFG
componentsPatches:
- name: kube-controller-manager
  extraArgs:
  # DaemonSet pods are created and deleted at once, without the default rate limits
  - key: concurrent-daemonset-syncs
    value: "10"
CFG
    # kwok renews a few leases at a time: at 5,000 nodes a 40 s lease lapses
    # while pods are created, and the node controller marks nodes NotReady.
    [ -n "$node_lease" ] && cat <<CFG
  - key: node-monitor-grace-period
    value: "$((node_lease * 2))s"
CFG
    cat <<CFG
---
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  # a /16 pod CIDR instead of kwok's /24 (254 pods) for scale tests with thousands of nodes
  # (NODEWAVE_POD_CIDR: wider for more than 65,534 pods)
  cidr: $pod_cidr
  nodeLeaseDurationSeconds: ${node_lease:-40}
  # kwokctl leaves these at 0 when a KwokConfiguration is given; 0 is rejected
  podPlayStageParallelism: 8
  nodePlayStageParallelism: 4
  nodeLeaseParallelism: 4
  podsOnNodeSyncParallelism: 2
CFG
    cat "$here/kwok/stages.yaml"
  } >"$out"
}

nodes_manifest() {
  local pool i
  for pool in $pools; do
    for ((i = 1; i <= per_pool; i++)); do
      cat <<NODE
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-$pool-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: kwok-$pool-$i
    $pool_label: $pool
status:
  allocatable: {cpu: "32", memory: 128Gi, pods: "110"}
  capacity: {cpu: "32", memory: 128Gi, pods: "110"}
NODE
    done
  done
}

wait_nodes_ready() {
  local want="$1" deadline=$((SECONDS + 120)) ready
  while :; do
    ready=$(kubectl --kubeconfig "$kubeconfig" get nodes -l type=kwok \
      -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null | grep -c True || true)
    [ "$ready" -ge "$want" ] && return 0
    [ $SECONDS -ge $deadline ] && die "only $ready of $want fake nodes became Ready within 120s (is the kwok controller running? see $cluster_dir/logs/kwok-controller.log)"
    sleep 1
  done
}

cmd_up() {
  local started=$SECONDS bin
  bin="$(bin_dir)"
  export PATH="$bin:$PATH"
  if [ -f "$kubeconfig" ] && kubectl --kubeconfig "$kubeconfig" get --raw /readyz >/dev/null 2>&1; then
    log "cluster '$name' is already running"
  else
    [ -d "$cluster_dir" ] && { log "removing stale cluster '$name'"; kwokctl delete cluster --name "$name" >/dev/null 2>&1 || true; }
    mkdir -p "$kwok_home"
    local cfg
    cfg="$(mktemp "${TMPDIR:-/tmp}/nodewave-kwokctl.XXXXXX.yaml")"
    write_config "$bin" "$cfg"
    log "starting cluster '$name' (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok) on 127.0.0.1"
    # --kubeconfig="" keeps ~/.kube/config untouched; the cluster's own kubeconfig is written in its directory.
    if ! KWOK_WORKDIR="$kwok_home" kwokctl create cluster --name "$name" --config "$cfg" \
      --kubeconfig "" --wait 2m >"$kwok_home/create-$name.log" 2>&1; then
      cat "$kwok_home/create-$name.log" >&2
      rm -f "$cfg"
      die "kwokctl could not start the cluster; logs are in $cluster_dir/logs/"
    fi
    rm -f "$cfg"
  fi
  local want=0 p
  for p in $pools; do want=$((want + per_pool)); done
  log "creating $want fake nodes in pools: $pools (label $pool_label)"
  nodes_manifest | kubectl --kubeconfig "$kubeconfig" apply -f - >/dev/null
  wait_nodes_ready "$want"
  log "cluster '$name' ready in $((SECONDS - started))s"
  echo "kubeconfig: $kubeconfig"
  echo "export KUBECONFIG=$kubeconfig"
}

cmd_down() {
  local bin
  bin="$(bin_dir 2>/dev/null)" || true
  [ -n "$bin" ] && export PATH="$bin:$PATH"
  if [ -d "$cluster_dir" ]; then
    log "stopping cluster '$name'"
    KWOK_WORKDIR="$kwok_home" kwokctl delete cluster --name "$name" >/dev/null 2>&1 || true
  fi
  # kwokctl stops what it started; make sure nothing of this cluster survives it
  # (the pid files name every process).
  local pidf pid
  for pidf in "$cluster_dir"/pids/*.pid; do
    [ -f "$pidf" ] || continue
    pid=$(cat "$pidf")
    kill "$pid" 2>/dev/null || true
  done
  rm -rf "$cluster_dir"
  log "cluster '$name' is down"
}

cmd_status() {
  [ -f "$kubeconfig" ] || die "cluster '$name' is not running (start it with hack/cluster.sh up)"
  export PATH="$(bin_dir):$PATH"
  KWOK_WORKDIR="$kwok_home" kwokctl get components --name "$name" 2>/dev/null || true
  kubectl --kubeconfig "$kubeconfig" get nodes -L "$pool_label"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) echo "export KUBECONFIG=$kubeconfig" ;;
  nodes) nodes_manifest ;;
  *) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
