#!/usr/bin/env bash
# Smoke checks of what tests/node/build.sh built, without starting a node (nothing here
# touches the host's network configuration, mounts or cgroups; servers listen on
# 127.0.0.1 only, the collector's health endpoint on 0.0.0.0:13133 as in the sidecar):
#   - every binary reports its pinned version;
#   - the pause binary exits on SIGTERM;
#   - the trimmed CoreDNS serves (template ANY ANY { rcode NXDOMAIN }, health, ready);
#   - the collector starts with the sidecar's configuration (otel-sidecar-config.json,
#     tracehook's otel_config in src/inject/sidecar.rs) and answers on :13133;
#   - Jaeger starts with the reconciler's --set arguments and answers /status, /api/services;
#   - each image tarball has the expected name, platform, entrypoint, cmd, user and
#     files (crane, against a throwaway local registry).
#
#   tests/node/check.sh [CACHE_DIR]   # default: the directory build.sh prints
set -Eeuo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
# shellcheck source=../cluster/versions.env
. "$here/../cluster/versions.env"
out=${1:-${TRACEHOOK_CACHE:-$HOME/.cache/tracehook}/node-$K8S_VERSION}
bin=$out/bin
images=$out/images
scratch=$(mktemp -d)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$scratch"
}
trap cleanup EXIT
failures=0
ok() { printf 'ok   %s\n' "$*"; }
bad() { printf 'FAIL %s\n' "$*"; failures=$((failures + 1)); }
expect() { # DESCRIPTION WANTED-SUBSTRING COMMAND...
  local what=$1 want=$2 got
  shift 2
  if got=$("$@" 2>&1) && [[ "$got" == *"$want"* ]]; then ok "$what: $(head -n1 <<<"$got")"
  else bad "$what: wanted \"$want\", got: $(head -n3 <<<"$got")"; fi
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
dns_rcode() { # PORT NAME: the rcode of an A query to 127.0.0.1:PORT, or "error"
  python3 - "$1" "$2" 2>/dev/null <<'EOF' || echo error
import random, socket, struct, sys
qid = random.randrange(65536)
name = b"".join(bytes([len(l)]) + l for l in sys.argv[2].encode().split(b".")) + b"\0"
query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
s.sendto(query, ("127.0.0.1", int(sys.argv[1])))
reply = s.recv(512)
rid, flags = struct.unpack(">HH", reply[:4])
assert rid == qid, "wrong id"
print(flags & 0xF)
EOF
}
busy_ports() { # PORT/PROTO...: prints those already taken on 127.0.0.1
  python3 - "$@" <<'EOF'
import socket, sys
busy = []
for arg in sys.argv[1:]:
    port, proto = arg.split("/")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
    # As Go's listeners: a port left in TIME_WAIT is free.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", int(port)))
    except OSError:
        busy.append(arg)
    s.close()
print(" ".join(busy))
EOF
}
wait_http() { # URL: up to 10 s
  local i
  for i in $(seq 100); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  return 1
}

echo "== versions"
expect kubelet "Kubernetes $K8S_VERSION" "$bin/kubelet" --version
expect kube-proxy "Kubernetes $K8S_VERSION" "$bin/kube-proxy" --version
expect containerd "$CONTAINERD_VERSION" "$bin/containerd" --version
expect ctr "$CONTAINERD_VERSION" "$bin/ctr" --version
expect containerd-shim-runc-v2 "$CONTAINERD_VERSION" "$bin/containerd-shim-runc-v2" -v
for p in bridge loopback host-local portmap; do
  expect "$p" "CNI $p plugin $CNI_PLUGINS_VERSION" env -u CNI_COMMAND "$bin/$p"
done
expect crane "$CRANE_VERSION" "$bin/crane" version
expect coredns "CoreDNS-${COREDNS_VERSION#v}" "$bin/coredns" -version
plugins=$("$bin/coredns" -plugins 2>&1 || true)
for p in bind cache errors health kubernetes log ready reload template; do
  if grep -qx "[[:space:]]*\(dns\.\)\?$p" <<<"$plugins"; then ok "coredns has plugin $p"; else bad "coredns lacks plugin $p"; fi
done
expect jaeger "v$JAEGER_VERSION" "$bin/jaeger" version
expect jaeger-agent "v$JAEGER_V1_VERSION" "$bin/jaeger-agent" version
expect hotrod "Usage" "$bin/hotrod" --help
expect otelcol-contrib "$OTELCOL_IMAGE_TAG" "$bin/otelcol-contrib" --version
components=$("$bin/otelcol-contrib" components 2>&1 || true)
for c in "name: otlp" "name: jaeger" "name: batch" "name: memory_limiter" "name: resource" "name: health_check"; do
  if grep -q -- "$c" <<<"$components"; then ok "otelcol-contrib has $c"; else bad "otelcol-contrib lacks $c"; fi
done

echo "== pause"
"$bin/pause" & pp=$!
sleep 0.3
kill -TERM "$pp"
if wait "$pp"; then ok "pause exits 0 on SIGTERM"; else bad "pause exited $? on SIGTERM"; fi

echo "== coredns"
dns_port=$(free_port) health_port=$(free_port) ready_port=$(free_port)
cat > "$scratch/Corefile" <<EOF
.:$dns_port {
    bind 127.0.0.1
    errors
    health 127.0.0.1:$health_port
    ready 127.0.0.1:$ready_port
    template ANY ANY {
        rcode NXDOMAIN
    }
}
EOF
"$bin/coredns" -conf "$scratch/Corefile" > "$scratch/coredns.log" 2>&1 & pids+=($!)
if wait_http "http://127.0.0.1:$health_port/health"; then ok "coredns health answers"; else bad "coredns health: $(cat "$scratch/coredns.log")"; fi
if wait_http "http://127.0.0.1:$ready_port/ready"; then ok "coredns ready answers"; else bad "coredns ready"; fi
if [ "$(dns_rcode "$dns_port" kubernetes.example.invalid)" = 3 ]; then ok "coredns answers NXDOMAIN (rcode 3)"
else bad "coredns did not answer NXDOMAIN: $(cat "$scratch/coredns.log")"; fi

# The node's Corefile recipe, with the kubernetes plugin pointed at a closed port (it
# starts unsynced after 5 s): every plugin it names is in the build.
k8s_port=$(free_port) dns_port=$(free_port) health_port=$(free_port) ready_port=$(free_port)
cat > "$scratch/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:$k8s_port", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
EOF
sed -e "s|@ADDR@|127.0.0.1|g" -e "s|@PORT@|$dns_port|g" -e "s|@KUBECONFIG@|$scratch/kubeconfig|g" \
  -e "s|@HEALTH@|127.0.0.1:$health_port|g" -e "s|@READY@|127.0.0.1:$ready_port|g" \
  "$here/coredns/Corefile.example" > "$scratch/Corefile.node"
"$bin/coredns" -conf "$scratch/Corefile.node" > "$scratch/coredns-node.log" 2>&1 & pids+=($!)
for i in $(seq 30); do [ "$(dns_rcode "$dns_port" www.example.com)" = 3 ] && break; sleep 0.1; done
if [ "$(dns_rcode "$dns_port" www.example.com)" = 3 ]; then ok "coredns with Corefile.example: www.example.com NXDOMAIN"
else bad "coredns with Corefile.example: $(tail -n 20 "$scratch/coredns-node.log")"; fi

echo "== otelcol-contrib with the sidecar configuration"
busy=$(busy_ports 4317/tcp 4318/tcp 6831/udp 6832/udp 13133/tcp)
if [ -n "$busy" ]; then
  bad "ports in use, collector not started: $busy"
else
  "$bin/otelcol-contrib" --config="$here/otel-sidecar-config.json" > "$scratch/otelcol.log" 2>&1 & op=$!
  pids+=("$op")
  if wait_http http://localhost:13133/; then ok "collector health: $(curl -fsS http://localhost:13133/)"
  else bad "collector health check did not answer: $(tail -n 20 "$scratch/otelcol.log")"; fi
  # As the sidecar passes it: the configuration in an environment variable.
  kill "$op"; wait "$op" 2>/dev/null || true
  OTEL_CONFIG=$(cat "$here/otel-sidecar-config.json") "$bin/otelcol-contrib" --config=env:OTEL_CONFIG \
    > "$scratch/otelcol-env.log" 2>&1 & op=$!
  pids+=("$op")
  if wait_http http://localhost:13133/; then ok "collector health with --config=env:OTEL_CONFIG"
  else bad "collector (env config) did not answer: $(tail -n 20 "$scratch/otelcol-env.log")"; fi
  kill "$op"; wait "$op" 2>/dev/null || true
fi

echo "== jaeger with the reconciler's arguments (src/reconciler/children.rs), on 127.0.0.1"
busy=$(busy_ports 4317/tcp 4318/tcp 5778/tcp 5779/tcp 6831/udp 6832/udp 8888/tcp 9411/tcp 13132/tcp \
  13133/tcp 14250/tcp 14268/tcp 16685/tcp 16686/tcp 27777/tcp 27778/tcp)
if [ -n "$busy" ]; then
  bad "ports in use, jaeger not started: $busy"
else
  # The embedded all-in-one configuration with the reconciler's --set overrides; its
  # sampling file is the image's (the reconciler mounts a ConfigMap there instead).
  JAEGER_LISTEN_HOST=127.0.0.1 "$bin/jaeger" \
    "--set=extensions::remote_sampling::file::path=$out/share/jaeger/sampling-strategies.json" \
    --set=extensions::jaeger_query::http::endpoint=127.0.0.1:16686 \
    --set=extensions::jaeger_query::grpc::endpoint=127.0.0.1:16685 > "$scratch/jaeger.log" 2>&1 & jp=$!
  pids+=("$jp")
  if wait_http http://127.0.0.1:13133/status; then ok "jaeger health: $(curl -fsS http://127.0.0.1:13133/status)"
  else bad "jaeger health did not answer: $(tail -n 20 "$scratch/jaeger.log")"; fi
  if services=$(curl -fsS http://127.0.0.1:16686/api/services); then ok "jaeger query /api/services: $services"
  else bad "jaeger query /api/services"; fi
  kill "$jp"; wait "$jp" 2>/dev/null || true
fi

echo "== images"
reg_port=$(free_port)
"$bin/crane" registry serve --address "127.0.0.1:$reg_port" > "$scratch/registry.log" 2>&1 & pids+=($!)
wait_http "http://127.0.0.1:$reg_port/v2/" || bad "crane registry serve"
check_image() { # FILE NAME ENTRYPOINT CMD USER FILE-IN-IMAGE...
  local file=$1 name=$2 ep=$3 cmd=$4 user=$5 got ref cfg f
  shift 5
  got=$(tar -xOf "$images/$file" manifest.json | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["RepoTags"][0])')
  # Full name as containerd records it.
  case "$name" in */*/*|*.*/*) full=$name ;; */*) full=docker.io/$name ;; *) full=docker.io/library/$name ;; esac
  [ "$got" = "$name" ] || [ "$got" = "$full" ] || { bad "$file: tagged $got, wanted $name"; return; }
  ref="127.0.0.1:$reg_port/check/${file%.tar}:latest"
  "$bin/crane" --insecure push "$images/$file" "$ref" > /dev/null 2>&1 || { bad "$file: crane push"; return; }
  cfg=$("$bin/crane" --insecure config "$ref")
  CFG=$cfg python3 - "$file" "$ep" "$cmd" "$user" <<'EOF' || { failures=$((failures + 1)); return; }
import json, os, sys
file, ep, cmd, user = sys.argv[1:]
c = json.loads(os.environ["CFG"])
got = {
    "platform": c["os"] + "/" + c["architecture"],
    "entrypoint": ",".join(c["config"].get("Entrypoint") or []),
    "cmd": ",".join(c["config"].get("Cmd") or []),
    "user": c["config"].get("User", ""),
}
want = {"platform": "linux/amd64", "entrypoint": ep, "cmd": cmd, "user": user}
if got != want:
    print(f"FAIL {file}: config {got}, wanted {want}")
    sys.exit(1)
print(f"ok   {file}: {got} env={c['config'].get('Env')}")
EOF
  "$bin/crane" --insecure export "$ref" - | tar -tv > "$scratch/files" || { bad "$file: crane export"; return; }
  # crane export writes the flattened filesystem with names as "etc/passwd".
  for f in "$@"; do
    f=${f#/} f=${f%/}
    if line=$(grep -m1 " \(\./\)\?$f/\?\( -> .*\)\?$" "$scratch/files"); then ok "$file has: $line"
    else bad "$file lacks /$f"; fi
  done
}
check_image pause-3.10.tar "$PAUSE_IMAGE" /pause "" 65535:65535 /pause /tmp/
check_image "jaeger-$JAEGER_VERSION.tar" "jaegertracing/jaeger:$JAEGER_VERSION" /cmd/jaeger/jaeger-linux "" 10001 \
  /cmd/jaeger/jaeger-linux /cmd/jaeger/sampling-strategies.json /etc/passwd /etc/group /tmp/
check_image "jaeger-agent-$JAEGER_V1_VERSION.tar" "jaegertracing/jaeger-agent:$JAEGER_V1_VERSION" /go/bin/agent-linux "" 10001 \
  /go/bin/agent-linux /tmp/
check_image "opentelemetry-collector-contrib-$OTELCOL_IMAGE_TAG.tar" "otel/opentelemetry-collector-contrib:$OTELCOL_IMAGE_TAG" \
  /otelcol-contrib --config,/etc/otelcol-contrib/config.yaml 10001:10001 /otelcol-contrib /etc/otelcol-contrib/config.yaml /tmp/
check_image "example-hotrod-$JAEGER_V1_VERSION.tar" "jaegertracing/example-hotrod:$JAEGER_V1_VERSION" /go/bin/hotrod-linux all "" \
  /go/bin/hotrod-linux /tmp/
check_image "busybox-${BUSYBOX_IMAGE##*:}.tar" "$BUSYBOX_IMAGE" "" sh "" /bin/busybox /bin/sh /bin/wget /bin/nc /bin/sleep /tmp/
check_image "spans-${SPANS_IMAGE##*:}.tar" "$SPANS_IMAGE" "" spans,idle 65532:65532 /usr/local/bin/spans /bin/sh /tmp/
if "$bin/crane" --insecure export "127.0.0.1:$reg_port/check/busybox-${BUSYBOX_IMAGE##*:}:latest" - | tar -tv |
  grep ' \(\./\)\?tmp/\?$' | grep -q '^drwxrwxrwt'; then
  ok "/tmp is 1777"
else bad "/tmp is not 1777"; fi

echo
if [ "$failures" = 0 ]; then echo "all checks passed"; else echo "$failures check(s) FAILED"; exit 1; fi
