# Sourced by hack/image.sh and hack/image-test.sh: the container tools as they
# work on this kind of machine (a VM where crun can neither set rlimits nor use
# hybrid cgroups, and no overlay mounts in nested containers):
#   - Debian's podman, buildah and runc, installed with apt-get when missing;
#   - a containers.conf with `default_ulimits = []`, runc and cgroupfs
#     (CONTAINERS_CONF, under the nodewave cache: nothing system-wide changes);
#   - every buildah/podman call with --storage-driver vfs (and for podman
#     --runtime runc --cgroup-manager cgroupfs).
# Defines: ensure_container_tools [COMMAND...], nw_buildah, nw_podman.

nw_cache_root="${NODEWAVE_CACHE:-$HOME/.cache/nodewave}"

ensure_container_tools() {  # [MORE_COMMANDS...]: also installed when missing (package = command)
  local need=() extra
  for extra in "$@"; do command -v "$extra" >/dev/null || need+=("$extra"); done
  command -v podman >/dev/null || need+=(podman)
  command -v buildah >/dev/null || need+=(buildah)
  command -v runc >/dev/null || need+=(runc)
  [ -s /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing Debian packages: ${need[*]}" >&2
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  local conf_dir="$nw_cache_root/containers"
  mkdir -p "$conf_dir"
  cat > "$conf_dir/containers.conf" <<'CONF'
# Written by hack/lib/containers.sh. crun/runc cannot set the default rlimits
# in this VM, and there is no systemd cgroup manager to talk to.
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
  export CONTAINERS_CONF="$conf_dir/containers.conf"
}

nw_buildah() { buildah --storage-driver vfs "$@"; }
nw_podman() { podman --storage-driver vfs --runtime runc --cgroup-manager cgroupfs "$@"; }
