#!/usr/bin/env bash
# Builds the renderers nodewave runs for Kustomize and Helm source directories
# (upstream `kustomize` and `helm`) from the Go module proxy, once, into a cache
# directory keyed by the pinned versions (hack/versions.env). The same binaries
# go into nodewave's image (see README, "Rendering: Kustomize and Helm").
# Prints progress on stderr and the bin directory on the last line of stdout.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache_root="${NODEWAVE_CACHE:-$HOME/.cache/nodewave}"
key="renderers-helm-${HELM_VERSION}_kustomize-${KUSTOMIZE_VERSION}"
bin="$cache_root/bin/$key"
work="$cache_root/build/$key"

log() { printf '[build-renderers %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ -x "$bin/helm" ] && [ -x "$bin/kustomize" ]; then
  log "cached renderers found in $bin"
  echo "$bin"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  cat >&2 <<MSG
error: Go is not installed, and helm and kustomize are built from source with it.
  Install Go 1.26 or newer (Debian: apt-get install golang-1.26, or the toolchain from
  your distribution) and run this again. Cached binaries would be used from:
  $bin
MSG
  exit 1
fi

# shellcheck source=go-env.sh
source "$here/go-env.sh"
mkdir -p "$bin" "$work"

# Both modules carry no replace directives, so `go install pkg@version` works;
# a wrapper module (as hack/build-binaries.sh uses for Kubernetes) is not needed.
# The -X flags make `helm version` / `kustomize version` print the pinned version.
if [ ! -x "$bin/helm" ]; then
  log "building helm ${HELM_VERSION} (helm.sh/helm/v3/cmd/helm); a cold build takes a few minutes on 2 cores"
  (cd "$work" && GOBIN="$bin" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" \
    "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}")
  [ -x "$bin/helm" ] || { log "error: helm was not built; see the output above"; exit 1; }
  log "helm built"
fi

if [ ! -x "$bin/kustomize" ]; then
  log "building kustomize ${KUSTOMIZE_VERSION} (sigs.k8s.io/kustomize/kustomize/v5)"
  (cd "$work" && GOBIN="$bin" go install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kustomize/api/provenance.version=kustomize/${KUSTOMIZE_VERSION}" \
    "sigs.k8s.io/kustomize/kustomize/v5@${KUSTOMIZE_VERSION}")
  [ -x "$bin/kustomize" ] || { log "error: kustomize was not built; see the output above"; exit 1; }
  log "kustomize built"
fi

drop_go_caches
log "renderers ready in $bin: $("$bin/helm" version --short 2>/dev/null || echo helm), $("$bin/kustomize" version 2>/dev/null || echo kustomize)"
echo "$bin"
