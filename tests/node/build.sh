#!/usr/bin/env bash
# Builds everything a real test node runs, from source, into a cache outside the clone:
#   bin/     kubelet, kube-proxy, containerd, ctr, containerd-shim-runc-v2, the CNI
#            plugins (bridge, loopback, host-local, portmap), crane, coredns, jaeger,
#            jaeger-agent, hotrod, otelcol-contrib, pause, spans
#   images/  OCI image tarballs (crane's `docker save` layout; `ctr images import`
#            takes them), listed in images/images.tsv: file, image name, image ID
#            (config digest), manifest digest
# and installs the Debian packages the node needs (runc, iptables, nftables, conntrack,
# kmod, busybox-static) when they are missing.
#
#   tests/node/build.sh      # prints the cache directory on the last line of stdout
#
# Pins: tests/node/versions.env (and K8S_VERSION in tests/cluster/versions.env).
# Every component has its own stamp (stamps/<name>, holding the key it was built
# with: its pins, flags, toolchain and the hashes of its inputs), so a changed pin
# rebuilds only what uses it. Nothing is downloaded but Go modules (through the
# configured Go module proxy) and Debian packages; no prebuilt binary, no registry
# image. Images are assembled without Docker: a reproducible root filesystem tar per
# image, and crane against a throwaway local registry (`crane registry serve` on
# 127.0.0.1) to set the configuration.
#
# Long: a cold run compiles kubelet, containerd, Jaeger and the collector (see
# tests/node/BUILD-TIMES.md). Run it with `nice -n 19` on a shared machine.
set -Eeuo pipefail
shopt -s inherit_errexit
umask 022
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
# shellcheck source=../cluster/versions.env
. "$repo/tests/cluster/versions.env"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false GOWORK=off
cache=${TRACEHOOK_CACHE:-$HOME/.cache/tracehook}
out="$cache/node-$K8S_VERSION"
bin="$out/bin"
images="$out/images"
stamps="$out/stamps"
work="$out/work"
share="$out/share"
step_name=setup
log() { printf '[node-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
trap 'rc=$?; log "FAILED in step \"$step_name\": \`$BASH_COMMAND\` exited with $rc"; exit $rc' ERR

case "${1:-}" in
  "") ;;
  *) echo "usage: $0" >&2; exit 2 ;;
esac

for tool in go gcc tar sha256sum python3 curl flock strip; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
mkdir -p "$bin" "$images" "$stamps" "$work" "$share"
exec 9>"$out/.lock"
flock -n 9 || { log "another build holds $out/.lock; waiting"; flock 9; }
overall_start=$(date +%s)
go_version=$(go env GOVERSION)

sha() { sha256sum "$@" | cut -c1-64; }

# step NAME KEY OUTPUT... -- COMMAND...: runs COMMAND (stdout to stderr) unless
# stamps/NAME holds KEY and every OUTPUT exists; then writes the stamp.
step() {
  local name=$1 key=$2 outputs=() o
  shift 2
  while [ "$1" != -- ]; do outputs+=("$1"); shift; done
  shift
  step_name=$name
  if [ -f "$stamps/$name" ] && [ "$(cat "$stamps/$name")" = "$key" ]; then
    local ok=true
    for o in "${outputs[@]}"; do [ -e "$o" ] || ok=false; done
    if $ok; then log "$name cached"; return 0; fi
  fi
  rm -f "$stamps/$name"
  log "building $name"
  local start
  start=$(date +%s)
  "$@" >&2
  for o in "${outputs[@]}"; do [ -e "$o" ] || die "$name: $o was not produced"; done
  printf '%s\n' "$key" > "$stamps/$name"
  log "built $name in $(( $(date +%s) - start ))s"
}

# The directory of a module version in the module cache (downloaded through the proxy).
module_dir() {
  local dir
  dir=$(go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')
  [ -n "$dir" ] && [ -d "$dir" ] || die "could not download $1"
  printf '%s\n' "$dir"
}

# go install PKG@V... into bin/ (through a scratch GOBIN, so bin/ never holds half a file).
go_install() { # NAME then go install arguments
  local name=$1
  shift
  rm -rf "$work/gobin-$name"
  GOBIN="$work/gobin-$name" go install "$@"
  chmod 0755 "$work/gobin-$name"/*
  mv -f "$work/gobin-$name"/* "$bin/"
  rmdir "$work/gobin-$name"
}

# A writable copy of a module (go install refuses modules with replace directives).
module_copy() { # MODULE@VERSION -> prints the copy's path
  local dst
  dst="$work/src/${1//\//_}"
  if [ ! -f "$dst/.copied" ]; then
    rm -rf "$dst"
    mkdir -p "$dst"
    cp -r "$(module_dir "$1")/." "$dst/"
    chmod -R u+w "$dst"
    touch "$dst/.copied"
  fi
  printf '%s\n' "$dst"
}

# ---------------------------------------------------------------- Debian packages
step_name=debian-packages
debs=(runc iptables nftables conntrack kmod busybox-static)
missing_debs() {
  local p
  for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
  done
}
missing=$(missing_debs)
if [ -n "$missing" ]; then
  # shellcheck disable=SC2086
  log "installing Debian packages:" $missing
  start=$(date +%s)
  export DEBIAN_FRONTEND=noninteractive
  # shellcheck disable=SC2086
  if ! apt-get install -y --no-install-recommends $missing >&2; then
    log "apt-get install failed; running apt-get update once and retrying"
    apt-get update >&2
    # shellcheck disable=SC2086
    apt-get install -y --no-install-recommends $missing >&2
  fi
  [ -z "$(missing_debs)" ] || die "Debian packages still missing: $(missing_debs | tr '\n' ' ')"
  log "built debian-packages in $(( $(date +%s) - start ))s"
else
  log "debian-packages cached (${debs[*]} installed)"
fi

# ---------------------------------------------------------------- pause
build_pause() {
  gcc -static -Os -Wall -Werror -o "$work/pause" "$here/pause.c"
  strip "$work/pause"
  mv -f "$work/pause" "$bin/pause"
}
step pause "pause.c $(sha "$here/pause.c") $(gcc -dumpfullversion) -static -Os" "$bin/pause" -- build_pause

# ---------------------------------------------------------------- crane
crane_flags=(-trimpath -ldflags "-s -w -X github.com/google/go-containerregistry/cmd/crane/cmd.Version=$CRANE_VERSION")
build_crane() {
  CGO_ENABLED=0 go_install crane "${crane_flags[@]}" "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION"
}
step crane "crane $CRANE_VERSION $go_version ${crane_flags[*]}" "$bin/crane" -- build_crane

# ---------------------------------------------------------------- CNI plugins
cni_flags=(-trimpath -ldflags "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION")
cni_pkgs=(main/bridge main/loopback ipam/host-local meta/portmap)
build_cni() {
  local p args=()
  for p in "${cni_pkgs[@]}"; do args+=("github.com/containernetworking/plugins/plugins/$p@$CNI_PLUGINS_VERSION"); done
  CGO_ENABLED=0 go_install cni "${cni_flags[@]}" "${args[@]}"
}
step cni-plugins "cni $CNI_PLUGINS_VERSION ${cni_pkgs[*]} $go_version ${cni_flags[*]}" \
  "$bin/bridge" "$bin/loopback" "$bin/host-local" "$bin/portmap" -- build_cni

# ---------------------------------------------------------------- containerd
containerd_ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION -X github.com/containerd/containerd/v2/version.Package=github.com/containerd/containerd/v2"
containerd_tags="no_btrfs no_devmapper no_zfs"
build_containerd() {
  CGO_ENABLED=0 go_install containerd -trimpath -tags "$containerd_tags" -ldflags "$containerd_ldflags" \
    "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
}
build_shim() {
  CGO_ENABLED=0 go_install shim -trimpath -tags no_grpc -ldflags "$containerd_ldflags" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
}
step containerd "containerd+ctr $CONTAINERD_VERSION $go_version tags=$containerd_tags $containerd_ldflags" \
  "$bin/containerd" "$bin/ctr" -- build_containerd
step containerd-shim-runc-v2 "shim $CONTAINERD_VERSION $go_version tags=no_grpc $containerd_ldflags" \
  "$bin/containerd-shim-runc-v2" -- build_shim

# ---------------------------------------------------------------- kubelet, kube-proxy
# From the control plane's wrapper module (tests/cluster), with build.sh's flags.
wrapper="$repo/tests/cluster"
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
k8s_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
check_wrapper() {
  local cmd v
  for cmd in kubelet kube-proxy; do
    grep -q "\"k8s.io/kubernetes/cmd/$cmd\"" "$wrapper/tools.go" ||
      die "tests/cluster/tools.go does not import k8s.io/kubernetes/cmd/$cmd: add it and run tests/cluster/build.sh --regenerate"
  done
  v=$(cd "$wrapper" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
  [ "$v" = "$K8S_VERSION" ] ||
    die "tests/cluster/go.mod requires k8s.io/kubernetes $v, versions.env says $K8S_VERSION: run tests/cluster/build.sh --regenerate"
}
build_k8s() { # kubelet | kube-proxy
  (cd "$wrapper" && go build -trimpath -ldflags "$k8s_ldflags" -o "$work/$1" "k8s.io/kubernetes/cmd/$1")
  mv -f "$work/$1" "$bin/$1"
}
step_name=kubelet
check_wrapper
wrapper_key="$K8S_VERSION $(sha "$wrapper/go.mod" "$wrapper/go.sum" | tr '\n' ' ')$go_version $k8s_ldflags"
step kubelet "kubelet $wrapper_key" "$bin/kubelet" -- build_k8s kubelet
step kube-proxy "kube-proxy $wrapper_key" "$bin/kube-proxy" -- build_k8s kube-proxy

# ---------------------------------------------------------------- CoreDNS (trimmed)
# tests/node/coredns: CoreDNS's coremain with only the plugins the node's Corefile uses.
coredns_ldflags="-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION"
build_coredns() {
  local v
  v=$(cd "$here/coredns" && go list -m -f '{{.Version}}' github.com/coredns/coredns)
  [ "$v" = "$COREDNS_VERSION" ] ||
    die "tests/node/coredns/go.mod requires coredns $v, versions.env says $COREDNS_VERSION: run (cd tests/node/coredns && go get github.com/coredns/coredns@$COREDNS_VERSION && go mod tidy) and commit go.mod and go.sum"
  (cd "$here/coredns" && CGO_ENABLED=0 go build -trimpath -ldflags "$coredns_ldflags" -o "$work/coredns" .)
  mv -f "$work/coredns" "$bin/coredns"
}
step coredns "coredns $COREDNS_VERSION $(sha "$here"/coredns/{main.go,go.mod,go.sum} | tr '\n' ' ')$go_version $coredns_ldflags" \
  "$bin/coredns" -- build_coredns

# ---------------------------------------------------------------- jaeger-agent, HotROD (v1)
jaeger_v1_ldflags="-s -w -X github.com/jaegertracing/jaeger/pkg/version.latestVersion=v$JAEGER_V1_VERSION"
build_jaeger_v1() { # PACKAGE OUTPUT
  local src
  src=$(module_copy "github.com/jaegertracing/jaeger@v$JAEGER_V1_VERSION")
  (cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags "$jaeger_v1_ldflags" -o "$work/$2" "$1")
  mv -f "$work/$2" "$bin/$2"
}
step jaeger-agent "jaeger-agent v$JAEGER_V1_VERSION $go_version $jaeger_v1_ldflags" "$bin/jaeger-agent" -- \
  build_jaeger_v1 ./cmd/agent jaeger-agent
step hotrod "hotrod v$JAEGER_V1_VERSION $go_version $jaeger_v1_ldflags" "$bin/hotrod" -- \
  build_jaeger_v1 ./examples/hotrod hotrod

# ---------------------------------------------------------------- spans (test client)
# tests/node/spans: the OpenTelemetry Go SDK and jaeger-client-go, configured by the
# environment tracehook injects (the real-node tests run it inside Pods).
build_spans() {
  (cd "$here/spans" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$work/spans" .)
  mv -f "$work/spans" "$bin/spans"
}
step spans "spans $(sha "$here"/spans/{main.go,go.mod,go.sum} | tr '\n' ' ')$go_version -s -w" "$bin/spans" -- build_spans

# ---------------------------------------------------------------- OpenTelemetry Collector
step otelcol-builder "builder $OTELCOL_BUILDER_VERSION $go_version -s -w" "$out/tools/builder" -- \
  env CGO_ENABLED=0 GOBIN="$out/tools" go install -trimpath -ldflags "-s -w" \
  "go.opentelemetry.io/collector/cmd/builder@$OTELCOL_BUILDER_VERSION"
check_otelcol_manifest() {
  local line mod ver want bad=false
  while read -r line; do
    mod=${line%% *} ver=${line##* }
    case "$mod" in
      go.opentelemetry.io/collector/confmap/*) continue ;; # stable v1.x, set by core's release
      go.opentelemetry.io/collector/*) want=$OTELCOL_CORE_VERSION ;;
      github.com/open-telemetry/opentelemetry-collector-contrib/*) want=$OTELCOL_CONTRIB_VERSION ;;
      *) want=$ver ;;
    esac
    if [ "$ver" != "$want" ]; then log "otelcol-builder.yaml: $mod $ver, versions.env says $want"; bad=true; fi
  done < <(sed -n 's/^[[:space:]]*- gomod:[[:space:]]*//p' "$here/otelcol-builder.yaml")
  ! $bad || die "tests/node/otelcol-builder.yaml does not match versions.env"
}
build_otelcol() {
  check_otelcol_manifest
  rm -rf "$work/otelcol"
  mkdir -p "$work/otelcol"
  cp "$here/otelcol-builder.yaml" "$work/otelcol/"
  # The builder generates a module (output_path ./otelcol-contrib), runs `go mod tidy`
  # and `go build -trimpath -ldflags="-s -w"` itself, with this environment.
  (cd "$work/otelcol" && "$out/tools/builder" --config=otelcol-builder.yaml --skip-strict-versioning=false)
  mv -f "$work/otelcol/otelcol-contrib/otelcol-contrib" "$bin/otelcol-contrib"
  rm -rf "$work/otelcol"
}
step otelcol-contrib "otelcol $(sha "$here/otelcol-builder.yaml") builder $OTELCOL_BUILDER_VERSION $go_version" \
  "$bin/otelcol-contrib" -- build_otelcol

# ---------------------------------------------------------------- Jaeger v2
jaeger_ldflags="-s -w -X github.com/jaegertracing/jaeger/internal/version.latestVersion=v$JAEGER_VERSION"
build_jaeger() {
  local src
  src=$(module_copy "github.com/jaegertracing/jaeger@$JAEGER_MODULE_VERSION")
  (cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags "$jaeger_ldflags" -o "$work/jaeger" ./cmd/jaeger)
  mkdir -p "$share/jaeger"
  cp "$src/cmd/jaeger/sampling-strategies.json" "$share/jaeger/sampling-strategies.json"
  mv -f "$work/jaeger" "$bin/jaeger"
}
step jaeger "jaeger v$JAEGER_VERSION ($JAEGER_MODULE_VERSION) $go_version $jaeger_ldflags" \
  "$bin/jaeger" "$share/jaeger/sampling-strategies.json" -- build_jaeger

# ---------------------------------------------------------------- images
# shellcheck source=image-lib.sh
. "$here/image-lib.sh"

# Each rootfs_* makes the root filesystem of one image in the directory given.
rootfs_pause() {
  base_rootfs "$1" 65535 pause
  put "$bin/pause" "$1/pause" 0755
}
rootfs_jaeger() {
  base_rootfs "$1" 10001 jaeger
  put "$bin/jaeger" "$1/cmd/jaeger/jaeger-linux" 0755
  put "$share/jaeger/sampling-strategies.json" "$1/cmd/jaeger/sampling-strategies.json" 0644
  put "$ca_bundle" "$1/etc/ssl/certs/ca-certificates.crt" 0644
}
rootfs_jaeger_agent() {
  base_rootfs "$1" 10001 jaeger
  put "$bin/jaeger-agent" "$1/go/bin/agent-linux" 0755
  put "$ca_bundle" "$1/etc/ssl/certs/ca-certificates.crt" 0644
}
rootfs_otelcol() {
  base_rootfs "$1" 10001 otel
  put "$bin/otelcol-contrib" "$1/otelcol-contrib" 0755
  put "$here/otelcol-config.yaml" "$1/etc/otelcol-contrib/config.yaml" 0644
  put "$ca_bundle" "$1/etc/ssl/certs/ca-certificates.crt" 0644
}
rootfs_hotrod() {
  base_rootfs "$1" 0 root
  put "$bin/hotrod" "$1/go/bin/hotrod-linux" 0755
  put "$ca_bundle" "$1/etc/ssl/certs/ca-certificates.crt" 0644
}
rootfs_busybox() {
  local applet
  base_rootfs "$1" 0 root
  put /bin/busybox "$1/bin/busybox" 0755
  mkdir -p "$1/root" "$1/usr/bin" "$1/sbin" "$1/usr/sbin"
  chmod 0700 "$1/root"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$1/bin/$applet"
  done
}

rootfs_spans() {
  rootfs_busybox "$1"
  put "$bin/spans" "$1/usr/local/bin/spans" 0755
}

# The key of an image: its recipe (this script's image line and rootfs function),
# the hashes of what goes in, and crane's version.
image_files=()
image_step() { # FILE FILES-IN-IMAGE... -- image ARGS...
  local file=$1 inputs=()
  image_files+=("$images/$file.tsv")
  shift
  while [ "$1" != -- ]; do inputs+=("$1"); shift; done
  shift
  local fn=$4
  step "image-${file%.tar}" "$* $(declare -f "$fn" base_rootfs rootfs_busybox image | sha) $(sha "${inputs[@]}" | tr '\n' ' ')crane $CRANE_VERSION" \
    "$images/$file" "$images/$file.tsv" -- "$@"
}

image_step pause-3.10.tar "$bin/pause" -- \
  image pause-3.10.tar "$PAUSE_IMAGE" rootfs_pause 65535:65535 /pause "" ""
image_step "jaeger-$JAEGER_VERSION.tar" "$bin/jaeger" "$share/jaeger/sampling-strategies.json" "$ca_bundle" -- \
  image "jaeger-$JAEGER_VERSION.tar" "jaegertracing/jaeger:$JAEGER_VERSION" rootfs_jaeger 10001 \
  /cmd/jaeger/jaeger-linux "" \
  5778/tcp,5779/tcp,4317/tcp,4318/tcp,14268/tcp,14250/tcp,9411/tcp,16686/tcp,13132/tcp,13133/tcp \
  JAEGER_LISTEN_HOST=0.0.0.0
image_step "jaeger-agent-$JAEGER_V1_VERSION.tar" "$bin/jaeger-agent" "$ca_bundle" -- \
  image "jaeger-agent-$JAEGER_V1_VERSION.tar" "jaegertracing/jaeger-agent:$JAEGER_V1_VERSION" rootfs_jaeger_agent 10001 \
  /go/bin/agent-linux "" 5775/udp,6831/udp,6832/udp,5778/tcp
image_step "opentelemetry-collector-contrib-$OTELCOL_IMAGE_TAG.tar" "$bin/otelcol-contrib" "$here/otelcol-config.yaml" "$ca_bundle" -- \
  image "opentelemetry-collector-contrib-$OTELCOL_IMAGE_TAG.tar" "otel/opentelemetry-collector-contrib:$OTELCOL_IMAGE_TAG" \
  rootfs_otelcol 10001:10001 /otelcol-contrib --config,/etc/otelcol-contrib/config.yaml 4317/tcp,4318/tcp,55678/tcp,55679/tcp
image_step "example-hotrod-$JAEGER_V1_VERSION.tar" "$bin/hotrod" "$ca_bundle" -- \
  image "example-hotrod-$JAEGER_V1_VERSION.tar" "jaegertracing/example-hotrod:$JAEGER_V1_VERSION" rootfs_hotrod "" \
  /go/bin/hotrod-linux all 8080/tcp,8081/tcp,8082/tcp,8083/tcp
busybox_tag=${BUSYBOX_IMAGE##*:}
image_step "busybox-$busybox_tag.tar" /bin/busybox -- \
  image "busybox-$busybox_tag.tar" "$BUSYBOX_IMAGE" rootfs_busybox "" "" sh ""

spans_tag=${SPANS_IMAGE##*:}
image_step "spans-$spans_tag.tar" "$bin/spans" /bin/busybox -- \
  image "spans-$spans_tag.tar" "$SPANS_IMAGE" rootfs_spans 65532:65532 "" "spans,idle" ""

step_name=finish
cleanup
registry_pid=
{
  printf '# file\timage\timage ID (config digest)\tmanifest digest\n'
  cat "${image_files[@]}"
} > "$images/images.tsv.tmp"
mv -f "$images/images.tsv.tmp" "$images/images.tsv"
rm -rf "$work"
log "node binaries in $bin, images in $images ($(( $(date +%s) - overall_start ))s)"
echo "$out"
