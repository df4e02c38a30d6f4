#!/usr/bin/env bash
# Builds nodewave's OCI image with buildah, FROM scratch, from what this machine
# has (no image is pulled):
#   /usr/local/bin/nodewave     the release build (cargo build --release, symbols stripped)
#   /usr/local/bin/helm, kustomize   the renderers hack/build-renderers.sh builds
#   the shared libraries `ldd` lists, /etc/ssl/certs/ca-certificates.crt,
#   /etc/passwd and /etc/group (nonroot = 65532), /tmp, /var/lib/nodewave
# User 65532, no shell, no git: nodewave uses libgit2 in-process and runs its own
# binary for fetches (`nodewave internal-git-fetch`). The Containerfile builds the
# same layout with a normal container engine (hack/image-test.sh compares them).
#
# Usage: hack/image.sh [--tag IMAGE] [--output oci-archive:FILE | docker-archive:FILE]
#                      [--containerfile]
#   --tag            image name [default: localhost/nodewave:<Cargo.toml version>]
#   --output         also write the image as an archive for a release pipeline to
#                    push (skopeo copy oci-archive:FILE docker://registry/...)
#   --containerfile  build the Containerfile instead (its build stages replaced by
#                    the same artifacts through --build-context), tagged IMAGE
# Installs podman, buildah, runc and ca-certificates from Debian when missing.
# Prints the image's size and digest; the last line of stdout is the image name.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
here=hack
# shellcheck source=lib/containers.sh
source "$here/lib/containers.sh"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
tag="localhost/nodewave:$version"
output=""
containerfile=false
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --output) output="$2"; shift 2 ;;
    --containerfile) containerfile=true; shift ;;
    *) echo "usage: hack/image.sh [--tag IMAGE] [--output oci-archive:FILE|docker-archive:FILE] [--containerfile]" >&2; exit 2 ;;
  esac
done
case "$output" in
  ""|oci-archive:?*|docker-archive:?*) ;;
  *) echo "error: --output must be oci-archive:FILE or docker-archive:FILE, not '$output'" >&2; exit 2 ;;
esac

# Every timestamp in the image (created, file times) is the commit's time, so
# the same commit and artifacts give the same digest (a rebuild can be checked).
epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
started=$SECONDS
log() { printf '[image %4ss] %s\n' "$((SECONDS - started))" "$*" >&2; }

log "container tools (podman, buildah, runc)"
ensure_container_tools

log "cargo build --release (nodewave)"
# Stripped (hack/lib/release-build.sh): the image carries no debug symbols.
# Progress: one line per 25 crates compiled, and every line that is not "Compiling".
# shellcheck source=lib/release-build.sh
source "$here/lib/release-build.sh"
cargo_release --locked --bin nodewave 2>&1 \
  | awk '/^ *Compiling / {n++; if (n % 25 == 0) {printf "  compiled %d crates (now %s)\n", n, $2; fflush()} next}
         {print; fflush()}' >&2 \
  || { log "error: cargo build --release failed (output above)"; exit 1; }
binary=target/release/nodewave
[ -x "$binary" ] || { log "error: $binary was not built; run cargo build --release to see why"; exit 1; }
"$binary" --version >&2

log "renderers (hack/build-renderers.sh)"
renderers=$("$here/build-renderers.sh" | tail -n1)

stage="$nw_cache_root/image-stage"
log "laying out the image in $stage"
"$here/image-rootfs.sh" "$stage/nodewave" "$binary"
rm -rf "$stage/renderers" && mkdir -p "$stage/renderers/out/usr/local/bin"
install -m 0755 "$renderers/helm" "$renderers/kustomize" "$stage/renderers/out/usr/local/bin/"

# The image's configuration; the Containerfile's final stage sets the same
# (hack/image-test.sh compares the two images' configs as well as their files).
labels=(
  "org.opencontainers.image.title=nodewave"
  "org.opencontainers.image.description=GitOps for Kubernetes DaemonSets, rolled out node pool by node pool"
  "org.opencontainers.image.version=$version"
  "org.opencontainers.image.licenses=Apache-2.0"
)

# The image this tag named before, removed below once nothing else names it.
previous=$(nw_podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)

if $containerfile; then
  log "buildah bud -f Containerfile (build stages from $stage)"
  mkdir -p "$stage/context"   # the final stage reads nothing from the context
  nw_buildah bud --quiet --isolation chroot --layers=false \
    --build-context "nodewave-build=$stage/nodewave" \
    --build-context "renderers-build=$stage/renderers" \
    --build-arg "VERSION=$version" --timestamp "$epoch" \
    -f Containerfile -t "$tag" "$stage/context" >/dev/null
else
  log "buildah from scratch"
  c=$(nw_buildah from scratch)
  trap 'nw_buildah rm "$c" >/dev/null 2>&1 || true' EXIT
  nw_buildah copy --quiet --chown 0:0 "$c" "$stage/nodewave/out/" / >/dev/null
  nw_buildah copy --quiet --chown 0:0 "$c" "$stage/renderers/out/" / >/dev/null
  nw_buildah copy --quiet --chown 65532:65532 "$c" "$stage/nodewave/state/" /var/lib/nodewave >/dev/null
  config=(--user 65532:65532 --workingdir /
    --env PATH=/usr/local/bin --env HOME=/var/lib/nodewave
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
    --port 8080/tcp --port 9090/tcp
    --entrypoint '["/usr/local/bin/nodewave"]' --cmd '["--help"]')
  for l in "${labels[@]}"; do config+=(--label "$l"); done
  nw_buildah config "${config[@]}" "$c"
  nw_buildah commit --quiet --rm --timestamp "$epoch" "$c" "$tag" >/dev/null
  trap - EXIT
fi

id=$(nw_podman image inspect --format '{{.Id}}' "$tag")
if [ -n "$previous" ] && [ "$previous" != "$id" ]; then
  # By id, without --force: refused (and kept) when another tag names it.
  nw_podman rmi "$previous" >/dev/null 2>&1 || true
fi
size=$(nw_podman image inspect --format '{{.Size}}' "$tag")
digest=$(nw_podman image inspect --format '{{.Digest}}' "$tag")
log "built $tag"
printf '  size:   %s bytes (%s MiB uncompressed)\n' "$size" "$(awk -v s="$size" 'BEGIN{printf "%.1f", s/1048576}')" >&2
printf '  digest: %s\n' "$digest" >&2
if [ -n "$output" ]; then
  file=${output#*:}
  rm -f "$file"
  # The archive's layers are compressed, so its manifest digest is not the local
  # one: it is the digest a registry gets when the archive is copied as it is.
  nw_buildah push --quiet --digestfile "$stage/archive.digest" "$tag" "$output:$tag" >/dev/null
  log "wrote $output ($(du -h "$file" | cut -f1)), manifest digest $(cat "$stage/archive.digest")"
fi
echo "$tag"
