#!/usr/bin/env bash
# Runs every test of nodewave on a fresh machine, exactly what CI runs (.ci/run):
#   1. installs what is missing (Debian's prometheus package for promtool and the
#      end-to-end Prometheus test), builds the control plane and the renderers
#      (helm, kustomize) once (cached under ~/.cache/nodewave),
#   2. cargo fmt --check, cargo clippy --all-targets -D warnings, the fuzz targets compile,
#   3. starts a local control plane (hack/cluster.sh, cluster "nodewave-test"),
#   4. builds nodewave's container image (hack/image.sh: release build, buildah)
#      and tests it (hack/image-test.sh: same layout as the Containerfile, smoke
#      test with podman against the local cluster),
#   5. cargo test (unit, property and every cluster test, the Helm chart), promtool rule tests,
#      a chaos smoke (hack/chaos.sh 3: three staged rollouts under faults, own cluster),
#   6. stops the control plane, whatever happened, and exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$SECONDS
step() { printf '\n==> [%4ss] %s\n' "$((SECONDS - started))" "$*"; }
disk() { df -h --output=avail . | tail -n1 | tr -d ' '; }
# One run from a fresh clone needs about 8 GB of disk at its peak (README,
# "Tests", Disk): Rust's target/ (about 5 GB) and, while the control plane is
# built, Go's caches (about 6 GB, removed once the binaries exist).
# Incremental compilation would add 2 GB to target/ and buys nothing here.
export CARGO_INCREMENTAL=0

step "prerequisites (disk available: $(disk))"
command -v cargo >/dev/null || { echo "error: cargo not found: install Rust (https://rustup.rs); rust-toolchain.toml pins the version" >&2; exit 1; }
command -v go >/dev/null || [ -d "$HOME/.cache/nodewave/bin" ] || { echo "error: Go not found: the local control plane is built from source with Go 1.26+ (Debian: golang-go)" >&2; exit 1; }
need_apt=()
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v git >/dev/null || need_apt+=(git)
{ [ -x /usr/sbin/sshd ] && command -v ssh-keygen >/dev/null; } || need_apt+=(openssh-server openssh-client)
{ command -v gpg >/dev/null && command -v gpgconf >/dev/null; } || need_apt+=(gnupg)   # tests/verify_*.rs sign commits
# nodewave's image: built with buildah, smoke-tested with podman (hack/image*.sh).
for tool in podman buildah runc; do command -v $tool >/dev/null || need_apt+=($tool); done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}"
  sudo=(); [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Packages installed just now may have started their services (on machines with
# systemd): the tests start their own Prometheus and sshd on loopback only.
if [[ " ${need_apt[*]} " == *" openssh-server "* ]] && command -v systemctl >/dev/null; then
  systemctl disable --now ssh 2>/dev/null || true
fi
# Debian's package may start a Prometheus server on :9090 when it is installed
# just now; stop that service only. The tests start their own on free loopback
# ports, so a Prometheus someone else runs is left alone.
if [[ " ${need_apt[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null \
  && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl disable --now prometheus || true
fi

step "control-plane binaries (built once from the Go module proxy, then cached)"
# kubectl from the same build is on PATH for the tests that run it.
control_plane_bin="$(hack/build-binaries.sh)"
export PATH="$control_plane_bin:$PATH"

step "renderers: helm and kustomize (built once from the Go module proxy, then cached)"
# The rendering tests run the real renderers and find them on PATH.
renderers_bin="$(hack/build-renderers.sh)"
export PATH="$renderers_bin:$PATH"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

step "fuzz targets compile (cargo check on stable; hack/fuzz.sh runs them on nightly)"
# The targets drive the crate's API (the planner's inputs among them), so an API
# change that breaks them fails here rather than in the next fuzzing session.
cargo check --manifest-path fuzz/Cargo.toml --target-dir target --bins --quiet

step "building tests"
cargo test --no-run --quiet

step "container image (hack/image.sh: cargo build --release, buildah FROM scratch)"
image=$(hack/image.sh | tail -n1)

export NODEWAVE_CLUSTER="${NODEWAVE_CLUSTER:-nodewave-test}"
cleanup() {
  step "stopping the local control plane"
  hack/cluster.sh down || true
}
trap cleanup EXIT
step "starting the local control plane ($NODEWAVE_CLUSTER)"
hack/cluster.sh up
eval "$(hack/cluster.sh env)"
export KUBECONFIG

status=0
step "image tests (hack/image-test.sh: layout equals the Containerfile's; smoke test with podman)"
hack/image-test.sh "$image" || status=1

step "cargo test (unit, property and cluster tests)"
cargo test --no-fail-fast -- --color never || status=1

step "promtool: alert rule checks and unit tests"
hack/promtool-test.sh || status=1

# A few trials of the chaos run on a cluster of its own, with the debug build
# `cargo test` made; the full run is `hack/chaos.sh 100` (README, "Chaos run").
step "chaos smoke (hack/chaos.sh 3: staged rollouts under faults, debug build)"
NODEWAVE_CHAOS_PROFILE=debug NODEWAVE_CHAOS_CLUSTER="$NODEWAVE_CLUSTER-chaos" \
  hack/chaos.sh 3 --minutes 2 || status=1

echo "disk: target/ $(du -sh target 2>/dev/null | cut -f1), ~/.cache/nodewave $(du -sh "$HOME/.cache/nodewave" 2>/dev/null | cut -f1), available $(disk)"
if [ $status -eq 0 ]; then
  step "all tests passed"
else
  step "FAILED: see the output above"
fi
exit $status
