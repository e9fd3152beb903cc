# shellcheck shell=bash
# Assembling OCI images without Docker, shared by tests/node/build.sh (the node's
# images) and tests/node/tracehook-image.sh (tracehook's own): a reproducible root
# filesystem tar, and crane against a throwaway local registry (`crane registry serve`
# on 127.0.0.1) to set the configuration. The caller defines log, die, and $bin (with
# crane), $work and $images.

registry_pid=
registry=
cleanup() {
  if [ -n "$registry_pid" ]; then
    kill "$registry_pid" 2>/dev/null || true
    wait "$registry_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
start_registry() {
  [ -z "$registry" ] || return 0
  local port i
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$work/registry"
  "$bin/crane" registry serve --address "127.0.0.1:$port" --disk "$work/registry" \
    >"$work/registry.log" 2>&1 &
  registry_pid=$!
  for i in $(seq 100); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$port/v2/"; then registry="127.0.0.1:$port"; return 0; fi
    kill -0 "$registry_pid" 2>/dev/null || { cat "$work/registry.log" >&2; die "crane registry serve exited"; }
    sleep 0.1
  done
  die "crane registry serve did not answer on 127.0.0.1:$port"
}
ca_bundle=/etc/ssl/certs/ca-certificates.crt
default_path=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# A root filesystem's common part: /etc/passwd, /etc/group (root, nobody and, for a
# non-root image, its user), /tmp 1777.
base_rootfs() { # DIR UID NAME
  local d=$1 uid=$2 name=$3
  rm -rf "$d"
  mkdir -p "$d/etc" "$d/tmp"
  chmod 0755 "$d" "$d/etc"
  chmod 1777 "$d/tmp"
  {
    echo "root:x:0:0:root:/root:/sbin/nologin"
    [ "$uid" = 0 ] || [ "$uid" = 65534 ] || echo "$name:x:$uid:$uid:$name:/tmp:/sbin/nologin"
    echo "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin"
  } > "$d/etc/passwd"
  {
    echo "root:x:0:"
    [ "$uid" = 0 ] || [ "$uid" = 65534 ] || echo "$name:x:$uid:"
    echo "nobody:x:65534:"
  } > "$d/etc/group"
  chmod 0644 "$d/etc/passwd" "$d/etc/group"
}
put() { # SRC DIR/PATH MODE
  mkdir -p "$(dirname "$2")"
  cp "$1" "$2"
  chmod "$3" "$2"
}
# image FILE NAME ROOTFS_FN USER ENTRYPOINT CMD PORTS ENV...: builds images/FILE (the
# image NAME). ENTRYPOINT, CMD and PORTS comma-separated ("" for none).
image() {
  local file=$1 name=$2 fn=$3 user=$4 entrypoint=$5 cmd=$6 ports=$7
  shift 7
  local env=("$default_path" "$@") d="$work/rootfs-$file" ref args=() e
  "$fn" "$d"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu \
    -C "$d" -cf "$work/$file.layer.tar" .
  start_registry
  ref="$registry/build/${file%.tar}"
  "$bin/crane" --insecure append --oci-empty-base -f "$work/$file.layer.tar" -t "$ref"
  args=(--set-platform linux/amd64 -t "$name" -o "$work/$file")
  [ -z "$entrypoint" ] || args+=(--entrypoint "$entrypoint")
  [ -z "$cmd" ] || args+=(--cmd "$cmd")
  [ -z "$user" ] || args+=(-u "$user")
  [ -z "$ports" ] || args+=(--exposed-ports "$ports")
  for e in "${env[@]}"; do args+=(--env "$e"); done
  "$bin/crane" --insecure mutate "$ref" "${args[@]}"
  # The image ID (config digest: what `ctr images ls` and the kubelet show after the
  # import) and the manifest digest.
  printf '%s\t%s\t%s\t%s\n' "$file" "$name" \
    "$(tar -xOf "$work/$file" manifest.json | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["Config"])')" \
    "$("$bin/crane" digest --tarball "$work/$file")" > "$work/$file.tsv"
  mv -f "$work/$file.tsv" "$images/$file.tsv"
  mv -f "$work/$file" "$images/$file"
  rm -rf "$d" "$work/$file.layer.tar"
}
