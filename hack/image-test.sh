#!/usr/bin/env bash
# Tests nodewave's image (run by hack/test.sh after hack/image.sh):
#   1. layout: builds the Containerfile too (hack/image.sh --containerfile) and
#      compares both images' file lists (path, type, mode, owner, size) and
#      configs (user, entrypoint, cmd, env, working dir, ports, labels); no shell,
#      no git in the image;
#   2. smoke test on the local cluster ($KUBECONFIG): the image runs with podman on
#      the host network, read-only root filesystem, as user 65532, with a
#      self-contained kubeconfig and a file:// repository mounted; it must render
#      a Kustomize directory, sync its DaemonSet (record Synced, pods on two fake
#      nodes of its own), serve /metrics, and exit 0 on SIGTERM.
# Cleans up only what it created (its container by id, namespace, nodes, files).
# Usage: hack/image-test.sh [IMAGE]   [default: localhost/nodewave:<version>]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=lib/containers.sh
source hack/lib/containers.sh
ensure_container_tools jq curl

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
image="${1:-localhost/nodewave:$version}"
started=$SECONDS
log() { printf '[image-test %4ss] %s\n' "$((SECONDS - started))" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
[ -n "${KUBECONFIG:-}" ] || fail "KUBECONFIG is not set: start a cluster (hack/cluster.sh up; eval \"\$(hack/cluster.sh env)\")"

work=$(mktemp -d)
container="" ns="" nodes=()
cleanup() {
  set +e
  [ -n "$container" ] && nw_podman rm -f "$container" >/dev/null 2>&1
  [ -n "$ns" ] && kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1
  for n in "${nodes[@]}"; do kubectl delete node "$n" --wait=false >/dev/null 2>&1; done
  rm -rf "$work"
}
trap cleanup EXIT

# ---------------------------------------------------------------- 1. layout
files_of() {  # IMAGE OUT -> OUT.files: sorted "path type mode uid:gid size" lines,
              #               OUT.sums: sha256 of every regular file
  local c mnt
  c=$(nw_buildah from --pull-never "$1")
  mnt=$(nw_buildah mount "$c")
  # Sizes of regular files only: a directory's size depends on the filesystem.
  (cd "$mnt" && find . -mindepth 1 -printf '%P %y %m %U:%G ' \( -type f -printf '%s\n' -o -printf '-\n' \) | sort) > "$2.files"
  (cd "$mnt" && find . -type f -exec sha256sum {} + | sort -k2) > "$2.sums"
  nw_buildah umount "$c" >/dev/null
  nw_buildah rm "$c" >/dev/null
}
config_of() {
  nw_podman image inspect --format '{{json .Config}}' "$1" | jq -S '{User, Entrypoint, Cmd, Env, WorkingDir, ExposedPorts, Labels}'
}

log "building the Containerfile (hack/image.sh --containerfile)"
cf_image="localhost/nodewave:containerfile-test"
hack/image.sh --containerfile --tag "$cf_image" >/dev/null
files_of "$image" "$work/buildah"
files_of "$cf_image" "$work/containerfile"
if ! diff -u "$work/buildah.files" "$work/containerfile.files"; then
  fail "hack/image.sh and the Containerfile produce different files (- buildah, + Containerfile)"
fi
diff -u "$work/buildah.sums" "$work/containerfile.sums" || fail "the two images' files have different contents"
config_of "$image" > "$work/buildah.config"
config_of "$cf_image" > "$work/containerfile.config"
diff -u "$work/buildah.config" "$work/containerfile.config" || fail "the two images' configs differ"
nw_podman rmi "$cf_image" >/dev/null
log "same layout: $(wc -l < "$work/buildah.files") files and directories, same contents, same config"
for f in usr/local/bin/nodewave usr/local/bin/helm usr/local/bin/kustomize etc/ssl/certs/ca-certificates.crt; do
  grep -q "^$f f " "$work/buildah.files" || fail "$f missing from the image"
done
if grep -E '(^|/)(sh|bash|dash|ash|busybox|git) ' "$work/buildah.files"; then
  fail "the image holds a shell or git"
fi
[ "$(jq -r .User "$work/buildah.config")" = 65532:65532 ] || fail "the image's user is not 65532:65532"
nw_podman run --rm --network none --read-only "$image" --version >&2

# ---------------------------------------------------------------- 2. smoke test
id="nw-image-$(date +%s)-$$"
ns="$id"
log "smoke test in namespace $ns"
kubectl create namespace "$ns" >/dev/null
for i in 1 2; do
  nodes+=("$id-$i")
  kubectl apply -f - >/dev/null <<NODE
apiVersion: v1
kind: Node
metadata:
  name: $id-$i
  annotations: {kwok.x-k8s.io/node: fake}
  labels: {type: kwok, kubernetes.io/os: linux, kubernetes.io/hostname: $id-$i, nodewave.io/pool: smoke, nodewave.test/owner: $id}
NODE
done

# A file:// repository whose tracked path is a Kustomize directory: the
# DaemonSet only gets its label and namespace from Kustomize.
repo="$work/repo"
mkdir -p "$repo/clusters/smoke"
cat > "$repo/clusters/smoke/kustomization.yaml" <<KUST
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: $ns
labels:
  - pairs: {nodewave.test/rendered-by: kustomize}
resources: [agent.yaml]
KUST
cat > "$repo/clusters/smoke/agent.yaml" <<'DS'
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
  labels: {app: agent}
spec:
  selector:
    matchLabels: {app: agent}
  template:
    metadata:
      labels: {app: agent}
    spec:
      nodeSelector: {nodewave.test/owner: OWNER}
      containers:
        - name: agent
          image: registry.example/agent:1.0.0
          resources:
            requests: {cpu: 10m, memory: 16Mi}
            limits: {cpu: 100m, memory: 64Mi}
          readinessProbe:
            httpGet: {path: /ready, port: 8080}
          livenessProbe:
            httpGet: {path: /live, port: 8080}
DS
sed -i "s/OWNER/$id/" "$repo/clusters/smoke/agent.yaml"
git -C "$repo" init -q -b main
git -C "$repo" -c user.name=nodewave -c user.email=tests@nodewave.invalid add -A
git -C "$repo" -c user.name=nodewave -c user.email=tests@nodewave.invalid commit -q -m smoke
# The container runs as 65532: libgit2 refuses a repository another user owns.
chown -R 65532:65532 "$repo"

# A kubeconfig with the certificates embedded (the cluster's refers to files).
kubectl config view --raw --minify --flatten > "$work/kubeconfig"
chown 65532:65532 "$work/kubeconfig"
chmod 0400 "$work/kubeconfig"
# The state directory, as the chart's emptyDir: writable by 65532 only (podman
# 4.3 ignores a tmpfs mount's mode=, and the root filesystem is read-only).
mkdir -m 0700 "$work/state"
chown 65532:65532 "$work/state"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

log "podman run $image (host network, read-only root, user 65532)"
container=$(nw_podman run -d --network host --read-only --user 65532:65532 \
  -v "$work/state:/var/lib/nodewave" \
  -v "$work/kubeconfig:/etc/nodewave/kubeconfig:ro" -v "$repo:/repo:ro" \
  "$image" run --repo file:///repo --path clusters/smoke \
  --kubeconfig /etc/nodewave/kubeconfig --listen "127.0.0.1:$port" \
  --poll-interval 2s --allow-namespace "$ns" --namespaced \
  --state-dir /var/lib/nodewave/repo --log-format json)
logs() { nw_podman logs "$container" 2>&1 | tail -n 40 >&2; }

running() { [ "$(nw_podman inspect --format '{{.State.Running}}' "$container")" = true ]; }
sleep 1
running || { logs; fail "nodewave exited right after starting"; }
# Real, effective, saved and filesystem uid and gid of the process, as the kernel sees it.
pid=$(nw_podman inspect --format '{{.State.Pid}}' "$container")
ids=$(awk '/^Uid:|^Gid:/ {printf "%s %s %s %s %s ", $1, $2, $3, $4, $5}' "/proc/$pid/status")
[ "$ids" = "Uid: 65532 65532 65532 65532 Gid: 65532 65532 65532 65532 " ] || { logs; fail "nodewave does not run as 65532:65532: $ids"; }

wait_for() {  # DESCRIPTION SECONDS COMMAND...
  local what="$1" deadline=$((SECONDS + $2)); shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || { logs; fail "timed out waiting for $what"; }
    running || { logs; fail "nodewave exited while waiting for $what"; }
    sleep 1
  done
}
synced() {
  [ "$(kubectl -n "$ns" get dsrollout agent -o jsonpath='{.status.phase}')" = Synced ]
}
wait_for "the DaemonSetRollout agent to be Synced" 120 synced
rendered=$(kubectl -n "$ns" get daemonset agent -o jsonpath='{.metadata.labels.nodewave\.test/rendered-by} {.metadata.labels.app\.kubernetes\.io/managed-by} {.metadata.annotations.nodewave\.io/source-file}')
[ "$rendered" = "kustomize nodewave clusters/smoke (kustomize)" ] || fail "DaemonSet not rendered by Kustomize and managed by nodewave: '$rendered'"
pods=$(kubectl -n "$ns" get pods -l app=agent --field-selector=status.phase=Running -o name | wc -l)
[ "$pods" -eq 2 ] || fail "expected 2 running agent pods, found $pods"
log "DaemonSet $ns/agent rendered by Kustomize and Synced, 2 pods"

curl -fsS "http://127.0.0.1:$port/metrics" > "$work/metrics" || { logs; fail "/metrics did not answer"; }
grep -q '^nodewave_build_info{' "$work/metrics" || fail "/metrics has no nodewave_build_info"
grep -q "^nodewave_daemonset_sync_status{.*namespace=\"$ns\".*status=\"Synced\".*} 1" "$work/metrics" \
  || { grep nodewave_daemonset_sync_status "$work/metrics" >&2; fail "/metrics does not show $ns/agent Synced"; }
log "/metrics served ($(wc -l < "$work/metrics") lines)"

log "SIGTERM"
nw_podman kill --signal TERM "$container" >/dev/null
code=$(timeout 60 podman --storage-driver vfs --runtime runc --cgroup-manager cgroupfs wait "$container") \
  || { logs; fail "nodewave did not exit within 60 s of SIGTERM"; }
[ "$code" = 0 ] || { logs; fail "nodewave exited with $code on SIGTERM"; }
nw_podman logs "$container" 2>&1 | grep -q '"signal received, stopping"' || { logs; fail "no shutdown log line"; }
log "exited 0 on SIGTERM"
echo "image test passed: layout equal to the Containerfile's, smoke test on the local cluster"
