#!/usr/bin/env bash
# Builds the real control-plane binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, etcd) from the official Go modules, plus kwok, into a cache
# outside the clone. Rebuilds only when the pin changes.
#
#   tests/cluster/build.sh                # prints the bin directory on the last line
#   tests/cluster/build.sh --regenerate   # after changing versions.env: rewrite
#                                         # go.mod/go.sum (review and commit them), build
#
# The pin lives in tests/cluster/versions.env. The binaries are built from the reviewed,
# checked-in wrapper module in this directory (go.mod, go.sum, tools.go). Its go.mod is
# generated from the pinned k8s.io/kubernetes tag's own go.mod by gen-gomod.sh (every
# staging module replaced by its published v0.x.y) and tidied, never edited by hand;
# before building, this script regenerates it in a scratch directory and refuses to
# build if the result differs from the checked-in files (the pin changed without
# --regenerate).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false GOWORK=off
cache=${TRACEHOOK_CACHE:-$HOME/.cache/tracehook}
out="$cache/k8s-$K8S_VERSION-kwok-$KWOK_VERSION"
bin="$out/bin"
stamp="$bin/.complete"
log() { printf '[cluster-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

regenerate=false
case "${1:-}" in
  "") ;;
  --regenerate) regenerate=true ;;
  *) echo "usage: $0 [--regenerate]" >&2; exit 2 ;;
esac

if ! $regenerate && [ -f "$stamp" ]; then
  log "binaries cached in $bin"
  echo "$bin"
  exit 0
fi
command -v go >/dev/null || { log "go is not installed"; exit 1; }
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
staging_version="v0.${K8S_VERSION#v1.}"

# The wrapper module for the pin, generated and tidied in a scratch directory (starting
# from the checked-in go.sum, so known hashes are kept and checked).
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
log "reading k8s.io/kubernetes@$K8S_VERSION go.mod"
kmod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
[ -f "$kmod" ] || { log "could not download k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
"$here/gen-gomod.sh" "$kmod" "$K8S_VERSION" "$staging_version" > "$scratch/go.mod"
cp "$here/tools.go" "$scratch/tools.go"
if [ -f "$here/go.sum" ]; then cp "$here/go.sum" "$scratch/go.sum"; fi
log "resolving modules (go mod tidy)"
(cd "$scratch" && go mod tidy)

if $regenerate; then
  if cmp -s "$scratch/go.mod" "$here/go.mod" && cmp -s "$scratch/go.sum" "$here/go.sum"; then
    log "tests/cluster/go.mod and go.sum are already up to date"
  else
    cp "$scratch/go.mod" "$scratch/go.sum" "$here/"
    rm -f "$stamp"
    log "rewrote tests/cluster/go.mod and go.sum for $K8S_VERSION: review and commit them"
  fi
fi
for f in go.mod go.sum; do
  if [ ! -f "$here/$f" ]; then
    log "tests/cluster/$f is missing: run tests/cluster/build.sh --regenerate and commit it"
    exit 1
  fi
  if ! cmp -s "$scratch/$f" "$here/$f"; then
    diff -u "$here/$f" "$scratch/$f" | head -40 >&2 || true
    log "tests/cluster/$f differs from what versions.env ($K8S_VERSION) and gen-gomod.sh generate (diff above: checked-in vs generated)."
    log "The pin changed without regenerating the wrapper module: run tests/cluster/build.sh --regenerate (or cargo xtask cluster build --regenerate), review the diff, commit go.mod and go.sum."
    exit 1
  fi
done

if [ -f "$stamp" ]; then
  log "binaries cached in $bin"
  echo "$bin"
  exit 0
fi
mkdir -p "$bin"
cd "$here"
etcd_version=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  log "building $cmd $K8S_VERSION (a cold build takes several minutes)"
  start=$(date +%s)
  go build -trimpath -ldflags "$ldflags" -o "$bin/$cmd" "k8s.io/kubernetes/cmd/$cmd"
  log "built $cmd in $(( $(date +%s) - start ))s"
done
log "building etcd $etcd_version"
start=$(date +%s)
go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3
log "built etcd in $(( $(date +%s) - start ))s"
log "installing kwok $KWOK_VERSION"
start=$(date +%s)
# kwok has no replace directives: installed from its own module (checksum database).
GOBIN="$bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
log "built kwok in $(( $(date +%s) - start ))s"
touch "$stamp"
log "all binaries in $bin"
echo "$bin"
