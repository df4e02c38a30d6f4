# Sourced by hack/build-binaries.sh and hack/build-renderers.sh: the Go
# environment both build with. Needs $cache_root.
#
# Go's build and module caches are needed only while building (about 6 GB once
# Kubernetes is built), so both live under $cache_root, not in the user's own
# Go caches, and drop_go_caches removes them once the binaries are in place:
# the binaries are what is cached. NODEWAVE_KEEP_GO_CACHE=1 keeps them (a
# rebuild after a version bump is then faster).
export GOTOOLCHAIN=local
export GOMODCACHE="$cache_root/gomod"
export GOCACHE="$cache_root/go-build"
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0

# Both builds share these caches, and each removes them when it is done: a
# build started while the other runs waits for it (measured: a concurrent
# renderer build removed the module cache under the Kubernetes build).
mkdir -p "$cache_root"
exec 9>"$cache_root/go-build.lock"
if ! flock -n 9; then
  log "waiting for another build of the local binaries to finish ($cache_root/go-build.lock)"
  flock 9
fi

drop_go_caches() {
  [ "${NODEWAVE_KEEP_GO_CACHE:-0}" = 1 ] && return 0
  # the module cache is read-only by design
  [ -d "$GOMODCACHE" ] && chmod -R u+w "$GOMODCACHE"
  rm -rf "$GOMODCACHE" "$GOCACHE"
  log "removed Go's build and module caches ($GOCACHE, $GOMODCACHE; NODEWAVE_KEEP_GO_CACHE=1 keeps them)"
}
