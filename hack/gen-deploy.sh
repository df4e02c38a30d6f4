#!/usr/bin/env bash
# Writes the files that are generated from one source of truth each:
#   deploy/helm/nodewave/crds/daemonsetrollouts.yaml   <- deploy/crds/daemonsetrollouts.yaml
#   deploy/helm/nodewave/files/nodewave-rules.yaml     <- deploy/prometheus/nodewave-rules.yaml
#   deploy/helm/nodewave/files/admission-policy.yaml   <- deploy/kubernetes/admission-policy.yaml
#   deploy/kubernetes/nodewave.yaml                    <- the chart, rendered with
#                                                         deploy/kubernetes/nodewave-values.yaml
# (Helm cannot read files outside a chart, hence the copies.)
# Usage: hack/gen-deploy.sh           write them
#        hack/gen-deploy.sh --check   exit 1 and show the difference when any is out of date
# Needs helm on PATH (hack/build-renderers.sh builds the pinned version) or $HELM.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
helm="${HELM:-helm}"
command -v "$helm" >/dev/null || { echo "error: helm not found: run hack/build-renderers.sh and put its directory on PATH (or set HELM)" >&2; exit 1; }
check=false
[ "${1:-}" = --check ] && check=true

chart=deploy/helm/nodewave
namespace=nodewave-system
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

render_manifest() {
  cat <<HEADER
# nodewave in one file: the Helm chart deploy/helm/nodewave rendered by
# hack/gen-deploy.sh with deploy/kubernetes/nodewave-values.yaml (do not edit by
# hand in this repository; tests/chart.rs checks it is up to date).
# The namespace enforces Pod Security "restricted"; the Deployment (two replicas,
# leader election, nodewave runs with --no-install-crds), least-privilege RBAC
# (tests/rbac.rs runs nodewave with exactly these rules), the record CRD, a
# PodDisruptionBudget and the metrics and webhook Services.
# Before applying: set the repository and --allow-namespace for your fleet, and
# create the Secrets nodewave-git (key token) and nodewave-webhook (key secret):
#   kubectl apply --server-side -f deploy/kubernetes/nodewave.yaml
---
apiVersion: v1
kind: Namespace
metadata:
  name: $namespace
  labels:
    app.kubernetes.io/name: nodewave
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
HEADER
  "$helm" template nodewave "$chart" --namespace "$namespace" --include-crds \
    -f deploy/kubernetes/nodewave-values.yaml
}

# target <- source, for the copies.
copies=(
  "$chart/crds/daemonsetrollouts.yaml:deploy/crds/daemonsetrollouts.yaml"
  "$chart/files/nodewave-rules.yaml:deploy/prometheus/nodewave-rules.yaml"
  "$chart/files/admission-policy.yaml:deploy/kubernetes/admission-policy.yaml"
)
status=0
for pair in "${copies[@]}"; do
  target=${pair%%:*} source=${pair#*:}
  if $check; then
    if ! diff -u "$source" "$target" >&2; then
      echo "error: $target differs from $source: run hack/gen-deploy.sh" >&2
      status=1
    fi
  else
    mkdir -p "$(dirname "$target")"
    cp "$source" "$target"
  fi
done

# The manifest is rendered from the chart as it is now (after the copies).
render_manifest > "$tmp/nodewave.yaml"
if $check; then
  if ! diff -u deploy/kubernetes/nodewave.yaml "$tmp/nodewave.yaml" >&2; then
    echo "error: deploy/kubernetes/nodewave.yaml is not what the chart renders: run hack/gen-deploy.sh" >&2
    status=1
  fi
  [ $status -eq 0 ] && echo "generated deploy files are up to date"
else
  cp "$tmp/nodewave.yaml" deploy/kubernetes/nodewave.yaml
  echo "wrote ${#copies[@]} copies and deploy/kubernetes/nodewave.yaml"
fi
exit $status
