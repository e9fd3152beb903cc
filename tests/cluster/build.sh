#!/usr/bin/env bash
# Builds the real control-plane binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, etcd) from the official Go modules, plus kwok, into a cache
# outside the clone. Rebuilds only when the pin changes.
#
#   tests/cluster/build.sh            # prints the bin directory on the last line
#
# The pin lives in tests/cluster/versions.env. The wrapper module's go.mod is generated
# from the pinned k8s.io/kubernetes tag's own go.mod (every staging module replaced by
# its published v0.x.y), never copied by hand.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
cache=${TRACEHOOK_CACHE:-$HOME/.cache/tracehook}
out="$cache/k8s-$K8S_VERSION-kwok-$KWOK_VERSION"
bin="$out/bin"
stamp="$bin/.complete"
log() { printf '[cluster-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ -f "$stamp" ]; then
  log "binaries cached in $bin"
  echo "$bin"
  exit 0
fi
command -v go >/dev/null || { log "go is not installed"; exit 1; }
mkdir -p "$bin"
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
staging_version="v0.${K8S_VERSION#v1.}"

# Generate the wrapper module in a scratch copy so the checked-in go.mod stays the
# reviewed one; then compare.
work="$out/module"
rm -rf "$work"; mkdir -p "$work"
log "reading k8s.io/kubernetes@$K8S_VERSION go.mod"
kmod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
[ -f "$kmod" ] || { log "could not download k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
"$here/gen-gomod.sh" "$kmod" "$K8S_VERSION" "$staging_version" > "$work/go.mod"
cp "$here/tools.go" "$work/tools.go"
if [ -f "$here/go.sum" ]; then cp "$here/go.sum" "$work/go.sum"; fi
cd "$work"
log "resolving modules (go mod tidy)"
go mod tidy
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
GOBIN="$bin" GOFLAGS=-buildvcs=false go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
log "built kwok in $(( $(date +%s) - start ))s"
cp go.mod go.sum "$out/"
touch "$stamp"
log "all binaries in $bin"
echo "$bin"
