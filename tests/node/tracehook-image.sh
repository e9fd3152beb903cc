#!/usr/bin/env bash
# tracehook's own image, without Docker: the same files in the same places as the
# Dockerfile's runtime stage (gcr.io/distroless/cc-debian12:nonroot with the binary at
# /usr/local/bin/tracehook): the release binary, the glibc libraries it links (from
# this Debian 12 host, as distroless/cc carries Debian 12's), CA certificates,
# /etc/passwd and /etc/group with nonroot (65532), /home/nonroot, /tmp (1777); no
# shell. User 65532:65532, entrypoint /usr/local/bin/tracehook, cmd serve, ports 8443
# and 8080. tests/image.rs checks it against the Dockerfile.
#
#   tests/node/tracehook-image.sh BINARY OUT.tar NAME:TAG
#
# Writes OUT.tar (`docker save` layout; `ctr images import` takes it) and prints its
# image ID (config digest) and manifest digest. crane comes from the node build
# (tests/node/build.sh). Every file is owned by root (as the node's images), including
# /home/nonroot, which tracehook does not use.
set -Eeuo pipefail
shopt -s inherit_errexit
umask 022
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf '[tracehook-image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ $# -eq 3 ] || { echo "usage: $0 BINARY OUT.tar NAME:TAG" >&2; exit 2; }
binary=$1 out=$2 name=$3
[ -x "$binary" ] || die "$binary is not an executable"
node_out=$(bash "$here/build.sh" | tail -n 1)
bin="$node_out/bin"
[ -x "$bin/crane" ] || die "no crane in $bin"
work=$(mktemp -d)
images="$work/out"
mkdir -p "$images"
trap 'cleanup; rm -rf "$work"' EXIT
# shellcheck source=image-lib.sh
. "$here/image-lib.sh"

# What distroless/cc nonroot carries that tracehook uses, and the binary.
rootfs_tracehook() {
  local d=$1 lib
  base_rootfs "$d" 65532 nonroot
  # distroless's nonroot user has its home in /home/nonroot.
  sed -i 's|^nonroot:x:65532:65532:nonroot:/tmp:|nonroot:x:65532:65532:nonroot:/home/nonroot:|' "$d/etc/passwd"
  mkdir -p "$d/home/nonroot"
  chmod 0755 "$d/home" "$d/home/nonroot"
  put "$binary" "$d/usr/local/bin/tracehook" 0755
  put "$ca_bundle" "$d/etc/ssl/certs/ca-certificates.crt" 0644
  # The libraries the binary links and the dynamic loader, at the paths it names.
  for lib in $(ldd "$binary" | awk '/=> \// { print $3 } /^\t\// { print $1 }'); do
    put "$(readlink -f "$lib")" "$d$lib" 0755
  done
}

file=$(basename "$out")
# crane prints what it pushed: stdout is for the digests.
image "$file" "$name" rootfs_tracehook 65532:65532 /usr/local/bin/tracehook serve 8443/tcp,8080/tcp \
  SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt >&2
mkdir -p "$(dirname "$out")"
mv -f "$images/$file" "$out"
cut -f3,4 "$images/$file.tsv"
