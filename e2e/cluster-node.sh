# shellcheck shell=bash
# shellcheck disable=SC2153 # NODE_BIN, BIN, DIR, PKI, LOGS, CACHE: set by e2e/cluster
# e2e/cluster-node.sh: the real node of `e2e/cluster up --node`, sourced by
# e2e/cluster (never run). One node named after the machine: containerd (its
# own config, root, state and socket under $NODE_DIR), the kubelet, kube-proxy
# and kube-scheduler, a bridge whose address is the node IP, the API server's
# address for pods and the pods' gateway. Nothing leaves the machine: the
# pods' traffic is dropped unless it stays on the bridge or goes to the host.
# `node_down` undoes every piece (processes, mounts, network devices, iptables
# chains, cgroups, sysctls) and `node_leftovers` lists whatever remains.

NODE_DIR="$DIR/node"
NODE_BRIDGE=latchkey0
NODE_IP=10.244.0.1
# The bridge's own MAC, set when it is made. A bridge left to choose takes
# the lowest MAC among its ports, so deleting the pod whose veth held it
# changes the gateway's MAC under every other pod: their ARP entry for
# 10.244.0.1 goes stale, and a connection in that window waits 3 s and
# fails with EHOSTUNREACH (seen as one failed request of a rollout on a
# busy machine). Locally administered, unicast.
NODE_BRIDGE_MAC=02:6c:6b:00:00:01
NODE_POD_CIDR=10.244.0.0/24
# Services of the node cluster; routed onto the bridge, so a ClusterIP that
# kube-proxy has no rule for never leaves the machine.
NODE_SERVICE_CIDR=10.96.0.0/24
# shellcheck disable=SC2034 # used by e2e/cluster (the API server's certificate)
NODE_SERVICE_IP=10.96.0.1
NODE_SOCK="$NODE_DIR/containerd.sock"
PAUSE_IMAGE=localhost/latchkey-e2e/pause:3.10.2
# The sysctls the node changes: the bridge plugin turns on forwarding, the
# kubelet sets the other three. Saved at up, put back at down.
NODE_SYSCTLS=(net.ipv4.ip_forward vm.overcommit_memory kernel.panic kernel.panic_on_oops)

node_name() { hostname | tr '[:upper:]' '[:lower:]'; }
ctr_() { ctr --address "$NODE_SOCK" -n k8s.io "$@"; }

# node_deps: containerd, runc, the CNI plugins and iptables from Debian.
node_deps() {
  "$E2E/deps" --node
  [ -d /sys/fs/cgroup/memory ] || [ -f /sys/fs/cgroup/cgroup.controllers ] || die "no cgroup filesystem at /sys/fs/cgroup"
  command -v gcc >/dev/null || die "gcc is needed to build the pause image (Kubernetes' pause.c)"
  [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || die "a static libc (libc.a, Debian's libc6-dev) is needed for the pause image"
}

# ---------------------------------------------------------------- images

# node_pause_image: Kubernetes' own build/pause/linux/pause.c from the
# k8s.io/kubernetes module pinned in e2e/k8s, statically linked, as an OCI
# archive cached by version.
node_pause_image() {
  local out="$CACHE/images/pause-$K8S_VERSION.tar"
  if [ ! -f "$out" ]; then
    local src root
    src=$(cd "$E2E/k8s" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
    [ -f "$src" ] || die "no pause.c at $src"
    root=$(mktemp -d)
    mkdir -p "$CACHE/images"
    gcc -Os -Wall -Werror -static -DVERSION="v3.10.2-$K8S_VERSION" -o "$root/pause" "$src" ||
      { rm -rf "$root"; die "gcc -static of $src failed"; }
    strip "$root/pause"
    "$E2E/oci-image" --ref "$PAUSE_IMAGE" --user 65535:65535 --entrypoint '["/pause"]' "$root" "$out"
    rm -rf "$root"
  fi
  echo "$out"
}

# node_latchkey_image: the image the Dockerfile builds, without docker: the
# static release binary of e2e/build-static, the CA bundle and time zones
# (Debian's ca-certificates and tzdata, as distroless/static holds them),
# /etc/passwd and /etc/group naming the nonroot user 65532, run as 65532,
# under the chart's default name and tag.
node_latchkey_image() {
  local out="$NODE_DIR/images/latchkey.tar" bin root version
  # (Called inside $(...), where set -e does not reach: every failure is
  # checked, or an image without the binary would be imported.)
  bin=$(cd "$E2E/.." && "$E2E/build-static") || die "e2e/build-static failed"
  [ -n "$bin" ] || die "e2e/build-static printed no path"
  case $bin in /*) ;; *) bin="${CARGO_TARGET_DIR:-$E2E/../target}/${bin#target/}" ;; esac
  [ -f "$bin" ] && [ -x "$bin" ] || die "e2e/build-static printed $bin, which is not there"
  version=$(sed -nE 's/^appVersion: "?([^"]+)"?$/\1/p' "$E2E/../charts/latchkey/Chart.yaml")
  root=$(mktemp -d)
  mkdir -p "$root/etc/ssl/certs" "$root/usr/share" "$root/tmp" "$root/home/nonroot" "$NODE_DIR/images"
  if ! { install -m 0755 "$bin" "$root/latchkey" &&
    install -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt" &&
    cp -a /usr/share/zoneinfo "$root/usr/share/zoneinfo"; }; then
    rm -rf "$root"
    die "could not fill the image's root"
  fi
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$root/etc/group"
  chmod 1777 "$root/tmp"
  chown 65532:65532 "$root/home/nonroot" && chmod 0700 "$root/home/nonroot"
  "$E2E/oci-image" --ref "ghcr.io/latchkey-dev/latchkey:$version" --user 65532:65532 \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --expose 8080/tcp --expose 8443/tcp \
    --entrypoint '["/latchkey"]' --cmd '["--help"]' "$root" "$out" ||
    { rm -rf "$root"; die "e2e/oci-image failed"; }
  rm -rf "$root"
  echo "$out"
}

# node_nginx_image: a test image of Debian's nginx (installed by e2e/deps):
# the binary, the shared libraries ldd names and the loader, at their paths,
# /etc/passwd and /etc/group, an empty /etc/nginx for a ConfigMap; run as
# 65532 with `nginx -e stderr -g 'daemon off;'`. Cached by nginx's version.
NGINX_IMAGE=localhost/latchkey-e2e/nginx:debian
node_nginx_image() {
  command -v nginx >/dev/null || "$E2E/deps" >/dev/null
  local nginx version out root lib
  nginx=$(command -v nginx)
  version=$(nginx -v 2>&1 | sed 's#.*/##')
  out="$CACHE/images/nginx-$version.tar"
  if [ ! -f "$out" ]; then
    root=$(mktemp -d)
    mkdir -p "$root/usr/sbin" "$root/etc/nginx" "$root/tmp" "$CACHE/images"
    cp -L "$nginx" "$root/usr/sbin/nginx"
    for lib in $(ldd "$nginx" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
    chmod 1777 "$root/tmp"
    "$E2E/oci-image" --ref "$NGINX_IMAGE" --user 65532:65532 \
      --entrypoint '["/usr/sbin/nginx", "-e", "stderr", "-g", "daemon off;"]' "$root" "$out"
    rm -rf "$root"
  fi
  echo "$out"
}

# node_import TAR: ctr -n k8s.io images import (what the CRI sees).
node_import() {
  ctr_ images import "$1" >"$LOGS/ctr-import.log" 2>&1 || fail "ctr images import $1" "$LOGS/ctr-import.log"
}

# ---------------------------------------------------------------- network

node_network_up() {
  local s
  # One node per machine: the bridge, the address range and the chains are
  # the machine's. Ours were removed by stop_all just before.
  if ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    die "$NODE_BRIDGE exists: another cluster directory's node is up on this machine (e2e/cluster down there first, or remove the bridge)"
  fi
  mkdir -p "$NODE_DIR"
  if [ ! -f "$NODE_DIR/sysctl.saved" ]; then
    for s in "${NODE_SYSCTLS[@]}"; do echo "$s=$(sysctl -n "$s")"; done >"$NODE_DIR/sysctl.saved"
  fi
  ip link add "$NODE_BRIDGE" address "$NODE_BRIDGE_MAC" type bridge
  ip addr replace "$NODE_IP/24" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  ip route replace "$NODE_SERVICE_CIDR" dev "$NODE_BRIDGE" src "$NODE_IP"
  sysctl -qw net.ipv4.ip_forward=1
  # Pods talk to each other and to the host, never past the machine: a
  # forwarded packet that enters or leaves the bridge from or to any other
  # device is dropped. The node's ports (API server, kubelet) answer only on
  # loopback and on the bridge.
  iptables -w -N LATCHKEY-NODE-FWD 2>/dev/null || iptables -w -F LATCHKEY-NODE-FWD
  iptables -w -A LATCHKEY-NODE-FWD -i "$NODE_BRIDGE" -o "$NODE_BRIDGE" -j ACCEPT
  iptables -w -A LATCHKEY-NODE-FWD -i "$NODE_BRIDGE" -j DROP
  iptables -w -A LATCHKEY-NODE-FWD -o "$NODE_BRIDGE" -j DROP
  iptables -w -C FORWARD -j LATCHKEY-NODE-FWD 2>/dev/null || iptables -w -I FORWARD 1 -j LATCHKEY-NODE-FWD
  iptables -w -N LATCHKEY-NODE-IN 2>/dev/null || iptables -w -F LATCHKEY-NODE-IN
  iptables -w -A LATCHKEY-NODE-IN -i lo -j RETURN
  iptables -w -A LATCHKEY-NODE-IN -i "$NODE_BRIDGE" -j RETURN
  iptables -w -A LATCHKEY-NODE-IN -p tcp -m multiport --dports "$1" -j DROP
  iptables -w -C INPUT -j LATCHKEY-NODE-IN 2>/dev/null || iptables -w -I INPUT 1 -j LATCHKEY-NODE-IN
  mkdir -p "$NODE_DIR/cni/net.d" "$NODE_DIR/cni/ipam"
  cat >"$NODE_DIR/cni/net.d/10-latchkey.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "latchkey-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$NODE_DIR/cni/ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
}

# ---------------------------------------------------------------- processes

node_containerd_up() {
  mkdir -p "$NODE_DIR/containerd"
  # containerd 1.6 puts its shims' sockets under /run/containerd/s whatever
  # its state directory, and the CRI plugin its network namespaces under
  # /run/netns: remember which of these directories we make, to remove them.
  local d
  for d in /run/containerd /run/netns; do
    [ -e "$d" ] || echo "$d"
  done >>"$NODE_DIR/made-dirs"
  cat >"$NODE_DIR/containerd/config.toml" <<EOF
version = 2
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$NODE_SOCK"
[ttrpc]
  address = "$NODE_DIR/containerd.ttrpc.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE_DIR/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # root here lacks CAP_SYS_RESOURCE: without this every pod fails with
  # "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$NODE_DIR/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni/net.d"
EOF
  date +%s >"$NODE_DIR/containerd.started"
  say "starting containerd ($NODE_SOCK)"
  containerd --config "$NODE_DIR/containerd/config.toml" >"$LOGS/containerd.log" 2>&1 9>&- &
  echo $! >"$DIR/containerd.pid"
  wait_for containerd "$LOGS/containerd.log" 60 ctr_ version
}

node_pki() {
  local log="$LOGS/pki-node.log"
  (
    cd "$PKI"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout kubelet.key \
      -out kubelet.csr -subj "/CN=system:node:$(node_name)"
    openssl x509 -req -in kubelet.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -out kubelet.crt \
      -extfile <(printf 'subjectAltName=IP:%s,DNS:%s\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment' "$NODE_IP" "$(node_name)")
  ) >"$log" 2>&1 || fail "node PKI generation" "$log"
}

node_up() {
  local t=$SECONDS name kubelet_port healthz_port proxy_healthz proxy_metrics sched_port
  name=$(node_name)
  kubelet_port=$(free_port); healthz_port=$(free_port)
  proxy_healthz=$(free_port); proxy_metrics=$(free_port); sched_port=$(free_port)
  node_containerd_up
  say "  containerd ready in $((SECONDS - t)) s"
  t=$SECONDS
  node_import "$(node_pause_image)"
  say "  pause image built/imported in $((SECONDS - t)) s"

  say "starting kube-scheduler"
  start_bin "$NODE_BIN" kube-scheduler --kubeconfig="$KUBECONFIG_PATH" \
    --authentication-kubeconfig="$KUBECONFIG_PATH" --authorization-kubeconfig="$KUBECONFIG_PATH" \
    --bind-address=127.0.0.1 --secure-port="$sched_port" --leader-elect=false
  wait_for kube-scheduler "$LOGS/kube-scheduler.log" 60 curl -fsSk "https://127.0.0.1:$sched_port/healthz"

  node_pki
  mkdir -p "$NODE_DIR/kubelet" "$NODE_DIR/pod-logs"
  cat >"$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 here, and no systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$NODE_SOCK
address: $NODE_IP
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz_port
tlsCertFile: $PKI/kubelet.crt
tlsPrivateKeyFile: $PKI/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: AlwaysAllow}
podLogsDir: $NODE_DIR/pod-logs
podCIDR: $NODE_POD_CIDR
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
failSwapOn: false
# The images are imported, never pulled: never collect them, and no disk
# pressure on a shared disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
serializeImagePulls: false
shutdownGracePeriod: 0s
EOF
  say "starting kubelet (node $name, $NODE_IP)"
  start_bin "$NODE_BIN" kubelet --config="$NODE_DIR/kubelet.yaml" --kubeconfig="$KUBECONFIG_PATH" \
    --root-dir="$NODE_DIR/kubelet" --volume-plugin-dir="$NODE_DIR/kubelet/volume-plugins" \
    --hostname-override="$name" --node-ip="$NODE_IP"
  wait_for kubelet "$LOGS/kubelet.log" 90 curl -fsS "http://127.0.0.1:$healthz_port/healthz"

  cat >"$NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $KUBECONFIG_PATH}
hostnameOverride: $name
mode: iptables
clusterCIDR: $NODE_POD_CIDR
healthzBindAddress: 127.0.0.1:$proxy_healthz
metricsBindAddress: 127.0.0.1:$proxy_metrics
# NodePorts on the bridge only; no sysctl changed for conntrack.
nodePortAddresses: [$NODE_IP/32]
iptables: {localhostNodePorts: false}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  say "starting kube-proxy"
  start_bin "$NODE_BIN" kube-proxy --config="$NODE_DIR/kube-proxy.yaml"
  wait_for kube-proxy "$LOGS/kube-proxy.log" 60 curl -fsS "http://127.0.0.1:$proxy_healthz/healthz"
  # kube-proxy inserts its jumps before ours (KUBE-FORWARD accepts marked
  # and established packets), after its healthz already answers: wait for
  # them (and the kubelet's KUBE-FIREWALL), then put ours first again; they
  # only add a jump that is missing, so ours stays first.
  wait_for kube-proxy "$LOGS/kube-proxy.log" 60 node_proxy_jumps
  node_guard_first FORWARD LATCHKEY-NODE-FWD
  node_guard_first INPUT LATCHKEY-NODE-IN
  t=$SECONDS
  wait_for kubelet "$LOGS/kubelet.log" 120 node_ready "$name"
  say "  node $name Ready after $((SECONDS - t)) s more"
}

# node_guard_first CHAIN TARGET: the jump to TARGET as CHAIN's first rule,
# with no moment without one (insert, then delete every other copy, the last
# first so that the numbers stay valid).
node_guard_first() {
  local n
  iptables -w -I "$1" 1 -j "$2"
  for n in $(iptables -w -S "$1" | sed 1d | grep -n -- "^-A $1 -j $2\$" | cut -d: -f1 | tail -n +2 | sort -rn); do
    iptables -w -D "$1" "$n"
  done
}

# node_proxy_jumps: kube-proxy's jumps from FORWARD and INPUT and the
# kubelet's from INPUT are in place.
node_proxy_jumps() {
  local forward input
  forward=$(iptables -w -S FORWARD) && input=$(iptables -w -S INPUT) || return 1
  grep -q -- '-j KUBE-FORWARD$' <<<"$forward" && grep -q -- '-j KUBE-EXTERNAL-SERVICES$' <<<"$forward" &&
    grep -q -- '-j KUBE-NODEPORTS$' <<<"$input" && grep -q -- '-j KUBE-FIREWALL$' <<<"$input"
}

node_ready() {
  "$BIN/kubectl" --kubeconfig="$KUBECONFIG_PATH" get node "$1" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -qx True
}

node_is_up() {
  alive containerd && alive kubelet && alive kube-proxy && alive kube-scheduler && node_ready "$(node_name)"
}

# ---------------------------------------------------------------- down

# node_down: stop the node's processes by PID, kill its pods through
# containerd, and remove every mount, device, iptables chain, cgroup and
# sysctl change it made.
node_down() {
  local name
  for name in kube-scheduler kubelet kube-proxy; do stop_one "$name" "${1:-}"; done
  local netns=() ns id
  if alive containerd; then
    # Every sandbox's network namespace (bind-mounted by the CRI plugin).
    for id in $(ctr_ containers ls -q 2>/dev/null); do
      ns=$(ctr_ containers info "$id" 2>/dev/null | python3 -c '
import json, sys
spec = json.load(sys.stdin).get("Spec") or {}
for n in (spec.get("linux") or {}).get("namespaces") or []:
    if n.get("type") == "network" and n.get("path"):
        print(n["path"])' 2>/dev/null || true)
      [ -n "$ns" ] && netns+=("$ns")
      ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    for id in $(ctr_ containers ls -q 2>/dev/null); do
      for _ in $(seq 1 50); do
        ctr_ tasks delete "$id" >/dev/null 2>&1 && break
        ctr_ tasks ls -q 2>/dev/null | grep -qx "$id" || break
        sleep 0.1
      done
      ctr_ containers delete "$id" >/dev/null 2>&1 || true
    done
  fi
  stop_one containerd "${1:-}"
  # What containerd could not stop (it died first, say): the processes in
  # the pods' cgroups, then a shim of ours left behind (a containerd-shim
  # whose command line names our socket). Nothing else is killed.
  local pid cg
  for cg in $(node_cgroups); do
    while IFS= read -r pid; do kill -9 "$pid" 2>/dev/null || true; done 2>/dev/null <"$cg/cgroup.procs" || true
  done
  for pid in $(node_pids); do
    case $(readlink "/proc/$pid/exe" 2>/dev/null) in
      */containerd-shim*) kill -9 "$pid" 2>/dev/null || true ;;
    esac
  done
  # When containerd could not be asked (it had died): the CRI plugin's
  # namespaces (cni-*) made since our containerd started.
  if [ -f "$NODE_DIR/containerd.started" ]; then
    local since
    since=$(cat "$NODE_DIR/containerd.started")
    for ns in /run/netns/cni-*; do
      [ -e "$ns" ] && [ "$(stat -c %Y "$ns")" -ge "$since" ] && netns+=("$ns")
    done
  fi
  for ns in ${netns[@]+"${netns[@]}"}; do
    case $ns in /var/run/netns/cni-*|/run/netns/cni-*) umount "$ns" 2>/dev/null || true; rm -f "$ns" ;; esac
  done
  # Mounts under the node's directory (overlays, shm, volumes), deepest first.
  local m
  for m in $(node_mounts | sort -r); do umount -l "$m" 2>/dev/null || true; done
  # Network: kube-proxy's rules, our own chains, the bridge and its route.
  [ -x "$NODE_BIN/kube-proxy" ] && "$NODE_BIN/kube-proxy" --cleanup >"$LOGS/kube-proxy-cleanup.log" 2>&1 || true
  iptables -w -D FORWARD -j LATCHKEY-NODE-FWD 2>/dev/null || true
  iptables -w -D INPUT -j LATCHKEY-NODE-IN 2>/dev/null || true
  local t c rule
  for t in filter nat mangle; do
    # The jumps into these chains from the built-in ones (the kubelet's
    # KUBE-FIREWALL from INPUT and OUTPUT), then the chains themselves.
    node_jumps iptables "$t" | while IFS= read -r rule; do eval "iptables -w -t $t -D ${rule#-A }" 2>/dev/null || true; done
    node_jumps ip6tables "$t" | while IFS= read -r rule; do eval "ip6tables -w -t $t -D ${rule#-A }" 2>/dev/null || true; done
    for c in $(node_chains "$t"); do iptables -w -t "$t" -F "$c" 2>/dev/null || true; done
    for c in $(node_chains "$t"); do iptables -w -t "$t" -X "$c" 2>/dev/null || true; done
    for c in $(node_chains6 "$t"); do ip6tables -w -t "$t" -F "$c" 2>/dev/null || true; done
    for c in $(node_chains6 "$t"); do ip6tables -w -t "$t" -X "$c" 2>/dev/null || true; done
  done
  for ns in $(ip -o link show master "$NODE_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$ns" 2>/dev/null || true
  done
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
  # cgroups the kubelet and runc made (cgroupfs driver): deepest first, once
  # their processes are gone.
  for cg in $(node_cgroups | sort -r); do rmdir "$cg" 2>/dev/null || true; done
  if [ -f "$NODE_DIR/sysctl.saved" ]; then
    while IFS= read -r s; do sysctl -qw "$s" || true; done <"$NODE_DIR/sysctl.saved"
    rm -f "$NODE_DIR/sysctl.saved"
  fi
  # The shims' sockets: only those of our containers (named after the
  # containerd address, hashed), then the directories we made, if empty.
  if [ -f "$NODE_DIR/made-dirs" ]; then
    local made
    while IFS= read -r made; do
      case $made in
        /run/containerd) rm -rf /run/containerd/s /run/containerd/runc 2>/dev/null; rmdir /run/containerd 2>/dev/null || true ;;
        /run/netns) rmdir /run/netns 2>/dev/null || true ;;
      esac
    done <"$NODE_DIR/made-dirs"
    rm -f "$NODE_DIR/made-dirs"
  fi
  rm -rf "${NODE_DIR:?}/containerd" "$NODE_DIR/kubelet" "$NODE_DIR/cni/ipam" "$NODE_DIR/runc" "$NODE_DIR/containerd.started"
}

# node_pids: processes whose command line names the node's directory (the
# shims name our containerd's socket), found without a process of our own
# that would name it too.
node_pids() {
  local p cmd
  for p in /proc/[0-9]*; do
    [ "${p#/proc/}" = "$$" ] && continue
    cmd=$({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue
    case $cmd in *"$NODE_DIR/"*) echo "${p#/proc/}" ;; esac
  done
  return 0
}
# node_jumps IPTABLES TABLE: the rules of the built-in chains that jump into
# the node's chains (KUBE-*, LATCHKEY-NODE-*), as `-S` prints them.
node_jumps() {
  { "$1" -w -t "$2" -S 2>/dev/null || true; } |
    awk '$1 == "-A" && $2 ~ /^(INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING)$/ && / -j (KUBE-|LATCHKEY-NODE-)/'
}
node_mounts() { awk -v d="$NODE_DIR/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo; }
node_chains() { { iptables -w -t "$1" -S 2>/dev/null || true; } | awk '$1 == "-N" && ($2 ~ /^KUBE-/ || $2 ~ /^LATCHKEY-NODE-/) {print $2}'; }
node_chains6() { { ip6tables -w -t "$1" -S 2>/dev/null || true; } | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'; }
node_cgroups() { find /sys/fs/cgroup -mindepth 2 -type d -name 'kubepods*' 2>/dev/null | while read -r d; do find "$d" -type d; done; }

# node_leftovers: what the node left on the machine; prints nothing and
# succeeds when there is nothing.
node_leftovers() {
  local found=0 out
  out=$(node_pids); [ -z "$out" ] || { echo "processes: $out"; found=1; }
  out=$(node_mounts; awk '$5 ~ /^(\/var)?\/run\/netns\/cni-/ {print $5}' /proc/self/mountinfo); [ -z "$out" ] || { echo "mounts: $out"; found=1; }
  out=$({ ip -o link show 2>/dev/null || true; } | awk -F': ' -v b="$NODE_BRIDGE" '$2 == b || $0 ~ ("master " b) {print $2}'); [ -z "$out" ] || { echo "links: $out"; found=1; }
  local t
  for t in filter nat mangle; do
    out=$(node_chains "$t"; node_chains6 "$t"); [ -z "$out" ] || { echo "iptables -t $t chains: $out"; found=1; }
  done
  out=$(node_cgroups || true); [ -z "$out" ] || { echo "cgroups: $out"; found=1; }
  out=$(ip route show "$NODE_SERVICE_CIDR" 2>/dev/null || true); [ -z "$out" ] || { echo "route: $out"; found=1; }
  return "$found"
}
