#!/usr/bin/env bash
# Builds yaml2json (kubectl's YAML reader: apimachinery's YAMLOrJSONDecoder with
# sigs.k8s.io/yaml, the versions pinned in go.mod/go.sum here) into a cache outside the
# clone, and prints its path on the last line. Rebuilt only when the pin changes: the
# cache directory is named after sigs.k8s.io/yaml's version and a hash of go.mod,
# go.sum and main.go.
#
#   tests/yaml11/build.sh      # used by tests/yaml11.rs
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false GOWORK=off
log() { printf '[yaml11-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

command -v go >/dev/null || { log "go is not installed (needed to build kubectl's YAML reader)"; exit 1; }
yaml_version=$(awk '$1 == "sigs.k8s.io/yaml" { print $2 }' "$here/go.mod")
[ -n "$yaml_version" ] || { log "tests/yaml11/go.mod does not require sigs.k8s.io/yaml"; exit 1; }
hash=$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-12)
cache=${TRACEHOOK_CACHE:-$HOME/.cache/tracehook}
out="$cache/yaml11-$yaml_version-$hash"
bin="$out/yaml2json"

if [ -x "$bin" ]; then
  log "cached: $bin"
  echo "$bin"
  exit 0
fi
mkdir -p "$out"
log "building yaml2json (sigs.k8s.io/yaml $yaml_version) into $out"
tmp=$(mktemp "$out/.yaml2json.XXXXXX")
trap 'rm -f "$tmp"' EXIT
(cd "$here" && go build -mod=readonly -trimpath -o "$tmp" .)
chmod 0755 "$tmp"
mv -f "$tmp" "$bin"
trap - EXIT
log "built: $bin"
echo "$bin"
