#!/usr/bin/env bash
# Builds helm from its Go module (helm.sh/helm/v3) into a cache outside the clone, for
# the chart checks; prints the binary's path on the last line. Rebuilds only when
# HELM_VERSION in versions.env changes.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
cache=${TRACEHOOK_CACHE:-$HOME/.cache/tracehook}
bin="$cache/helm-$HELM_VERSION/bin"
if [ -x "$bin/helm" ]; then
  echo "$bin/helm"
  exit 0
fi
command -v go >/dev/null || { echo "go is not installed" >&2; exit 1; }
mkdir -p "$bin"
echo "[build-helm $(date +%H:%M:%S)] building helm $HELM_VERSION (a cold build takes about 3 minutes)" >&2
start=$(date +%s)
GOBIN="$bin.tmp" go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
  "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
mv "$bin.tmp/helm" "$bin/helm"
rmdir "$bin.tmp"
echo "[build-helm $(date +%H:%M:%S)] built helm in $(( $(date +%s) - start ))s" >&2
echo "$bin/helm"
