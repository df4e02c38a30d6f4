#!/usr/bin/env bash
# Lays out what nodewave's image holds besides the renderers, under OUT:
#   OUT/out/usr/local/bin/nodewave          the release binary
#   OUT/out/<path>                          each shared library `ldd` lists, at the
#                                           path the dynamic linker looks for it
#   OUT/out/etc/ssl/certs/ca-certificates.crt
#   OUT/out/etc/passwd, OUT/out/etc/group   root and nonroot (65532)
#   OUT/out/tmp                             mode 1777 (a mount point in a pod)
#   OUT/out/var/lib                         root's, so only the state directory is 65532's
#   OUT/state/                              empty: becomes /var/lib/nodewave, owned by 65532
# Used by hack/image.sh on the host and by the Containerfile's build stage, so
# both images get the same layout (hack/image-test.sh compares them).
# Usage: hack/image-rootfs.sh OUT NODEWAVE_BINARY
set -euo pipefail
out="$1/out" state="$1/state" bin="$2"
rm -rf "$1" && mkdir -p "$out/usr/local/bin" "$out/etc/ssl/certs" "$out/tmp" "$out/var/lib" "$state"
install -m 0755 "$bin" "$out/usr/local/bin/nodewave"
# Each "name => /path (addr)" or "/path (addr)" line: copy the file the path
# resolves to, under that path (the interpreter too; linux-vdso has no file).
ldd "$bin" | awk '/=> \// {print $3} /^[ \t]*\/[^ ]+ \(/ {print $1}' | sort -u | while read -r lib; do
  mkdir -p "$out$(dirname "$lib")"
  cp -L "$lib" "$out$lib"
  chmod 0755 "$out$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$out/etc/ssl/certs/ca-certificates.crt"
chmod 0644 "$out/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/var/lib/nodewave:/sbin/nologin\n' > "$out/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$out/etc/group"
chmod 0644 "$out/etc/passwd" "$out/etc/group"
chmod 1777 "$out/tmp"
chmod 0755 "$state"
