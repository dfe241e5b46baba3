#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine, for the end-to-end
# tests: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# containerd with runc and the CNI bridge plugin, kube-proxy and a kubelet.
#
#   hack/local-cluster.sh up       clear leftovers, then start it (needs root)
#   hack/local-cluster.sh down     stop it and remove every trace
#   hack/local-cluster.sh status   what runs
#   hack/local-cluster.sh run CMD  run CMD in the node's network namespace
#   hack/local-cluster.sh kill NAME...   SIGKILL etcd or kube-apiserver, as a crash would
#   hack/local-cluster.sh start NAME...  start them again, with the same flags and data
#
# Every component runs inside a network namespace and a mount namespace of
# its own, so the machine's interfaces, routes and iptables are never touched:
# the node has its own /run, /var/lib and /var/log (tmpfs), and its addresses
# exist only inside the namespace. What still reaches the host is undone by
# `down`: the kubepods cgroups and the kernel settings the kubelet changes.
# The Kubernetes binaries are built from Go modules once and cached beside
# the envtest binaries. `up` imports the image archives of `make
# image-archives` (IMAGES, default bin/images) into the node's containerd.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.36.3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${LOCAL_CLUSTER_DIR:-/tmp/keepalive-local-cluster}
IMAGES=${IMAGES:-$ROOT/bin/images}
NETNS=keepalive-node
NODE_NAME=keepalive-node
NODE_IP=10.250.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/24
SANDBOX_IMAGE=docker.io/keepalive-e2e/pause:1
ASSETS_ROOT=${ENVTEST_ASSETS_ROOT:-${XDG_DATA_HOME:-$HOME/.local/share}/kubebuilder-envtest}
NODE_BIN=$ASSETS_ROOT/k8s/node-$K8S_VERSION-$(go env GOOS)-$(go env GOARCH)
NODE_CMDS=(kube-controller-manager kube-scheduler kubelet kube-proxy)
# Host kernel settings the kubelet rewrites at start; `down` puts them back.
KUBELET_SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes)

say() { echo "local-cluster: $*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root: it creates namespaces, cgroups and mounts"

netns_file=/run/netns/$NETNS
mnt_file=$STATE/ns/mnt

# node_exec runs a command inside the node's network and mount namespaces.
node_exec() { nsenter --net="$netns_file" --mount="$mnt_file" -- "$@"; }

# kubectl talks to the API server, which listens inside the network namespace.
kubectl() { nsenter --net="$netns_file" -- "$ENVTEST_BIN/kubectl" --kubeconfig "$STATE/kubeconfig" "$@"; }

install_packages() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v nsenter >/dev/null || missing+=(util-linux)
  command -v ip >/dev/null || missing+=(iproute2)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
}

binaries() {
  ENVTEST_BIN=$("$ROOT/hack/setup-envtest.sh")
  local cmd missing=()
  for cmd in "${NODE_CMDS[@]}"; do [ -x "$NODE_BIN/$cmd" ] || missing+=("$cmd"); done
  if [ ${#missing[@]} -gt 0 ]; then
    say "building ${missing[*]} $K8S_VERSION from Go modules (a few minutes the first time), cached in $NODE_BIN"
    # Into a side folder first, so that an interrupted build leaves no
    # broken binary in the cache.
    rm -rf "$NODE_BIN.tmp"
    "$ROOT/hack/build-k8s.sh" "$K8S_VERSION" "$NODE_BIN.tmp" "${missing[@]}"
    mkdir -p "$NODE_BIN"
    mv "$NODE_BIN.tmp"/* "$NODE_BIN"/
    rmdir "$NODE_BIN.tmp"
  fi
}

# --- PKI ---------------------------------------------------------------------

# issue NAME SUBJECT EXTENSIONS: a key and a certificate signed by the CA.
issue() {
  local d=$STATE/pki
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$d/$1.key" -subj "$2" -out "$d/$1.csr" 2>/dev/null
  printf '%b\n' "$3" > "$d/$1.ext"
  openssl x509 -req -in "$d/$1.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 7 -extfile "$d/$1.ext" -out "$d/$1.crt" 2>/dev/null
}

# kubeconfig NAME: a kubeconfig for the client certificate NAME.
kubeconfig() {
  local d=$STATE/pki
  cat > "$STATE/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://$NODE_IP:6443
    certificate-authority-data: $(base64 -w0 "$d/ca.crt")
users:
- name: $1
  user:
    client-certificate-data: $(base64 -w0 "$d/$1.crt")
    client-key-data: $(base64 -w0 "$d/$1.key")
contexts:
- name: local
  context: {cluster: local, user: $1}
current-context: local
EOF
}

pki() {
  local d=$STATE/pki client="keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth"
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
    -keyout "$d/ca.key" -out "$d/ca.crt" -subj "/CN=keepalive-local-cluster-ca" 2>/dev/null
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/sa.key"
  openssl ec -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  issue apiserver "/CN=kube-apiserver" "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:$NODE_IP,IP:10.96.0.1,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  issue kubelet-serving "/CN=$NODE_NAME" "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:$NODE_IP,DNS:$NODE_NAME"
  issue apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  issue admin "/O=system:masters/CN=admin" "$client"
  issue controller-manager "/CN=system:kube-controller-manager" "$client"
  issue scheduler "/CN=system:kube-scheduler" "$client"
  issue kube-proxy "/CN=system:kube-proxy" "$client"
  issue kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "$client"
  local name
  for name in admin controller-manager scheduler kube-proxy kubelet; do kubeconfig "$name"; done
  mv "$STATE/admin.kubeconfig" "$STATE/kubeconfig"
}

# --- configuration -----------------------------------------------------------

configs() {
  local d=$STATE/pki
  mkdir -p "$STATE/cni"
  cat > "$STATE/cni/10-bridge.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "keepalive-node",
  "plugins": [{
    "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}
  }]
}
EOF
  # restrict_oom_score_adj: the capability bounding set may lack
  # CAP_SYS_RESOURCE, and runc then fails to lower a sandbox's oom_score_adj.
  cat > "$STATE/containerd.toml" <<EOF
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$SANDBOX_IMAGE"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
EOF
  # failCgroupV1: a cgroup v1 host is deprecated but still runs.
  # imageGC thresholds: images come from archives, never from a registry,
  # so the kubelet must not remove them.
  # syncFrequency: how soon a changed Secret reaches a pod's volume (1m by
  # default), such as the webhook certificate the operator writes at start.
  cat > "$STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $d/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $d/kubelet-serving.crt
tlsPrivateKeyFile: $d/kubelet-serving.key
failSwapOn: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
podLogsDir: /var/log/pods
syncFrequency: 10s
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
EOF
  # conntrack values of 0 leave the kernel's settings alone; they are not
  # all namespaced.
  cat > "$STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $STATE/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

# --- namespaces --------------------------------------------------------------

namespaces() {
  ip netns add "$NETNS"
  ip -n "$NETNS" link set lo up
  # The node's address lives on a bridge of its own: the kubelet refuses a
  # loopback node IP.
  ip -n "$NETNS" link add node0 type bridge
  ip -n "$NETNS" addr add "$NODE_IP/32" dev node0
  ip -n "$NETNS" link set node0 up
  ip netns exec "$NETNS" sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'

  # A persistent mount namespace: its file must sit on a private mount.
  mkdir -p "$STATE/ns" "$STATE/kubelet" "$STATE/containerd"
  # mount -n: no record in the host's /run/mount.
  mount -n --bind "$STATE/ns" "$STATE/ns"
  mount -n --make-private "$STATE/ns"
  touch "$mnt_file"
  unshare --mount="$mnt_file" --propagation slave sh -ec "
    for dir in /run /var/lib /var/log; do mount -n -t tmpfs -o mode=755 keepalive-node \$dir; done
    mkdir -p /var/lib/kubelet /var/lib/containerd
    mount -n --bind '$STATE/kubelet' /var/lib/kubelet
    mount -n --make-rshared /var/lib/kubelet
    mount -n --bind '$STATE/containerd' /var/lib/containerd
  "
}

# start NAME CMD...: a daemon in the node's namespaces, logging to logs/NAME.log
# (appended to, so that a restarted daemon keeps its earlier lines).
start() {
  local name=$1
  shift
  mkdir -p "$STATE/logs"
  setsid nsenter --net="$netns_file" --mount="$mnt_file" -- "$@" >>"$STATE/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$STATE/$name.pid"
}

# wait_for WHAT SECONDS CMD...: until CMD succeeds.
wait_for() {
  local what=$1 seconds=$2
  shift 2
  local deadline=$(( $(date +%s) + seconds ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      say "$what not ready after ${seconds}s; the last lines of its logs:"
      tail -n 20 "$STATE"/logs/*.log >&2 || true
      die "$what did not start"
    fi
    sleep 0.2
  done
}

# etcd keeps its data in the node's /var/lib, which outlives the process: a
# restarted etcd finds what it had.
start_etcd() {
  start etcd "$ENVTEST_BIN/etcd" --data-dir /var/lib/etcd --unsafe-no-fsync \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380
}

start_apiserver() {
  local d=$STATE/pki
  start kube-apiserver "$ENVTEST_BIN/kube-apiserver" \
    --etcd-servers http://127.0.0.1:2379 \
    --advertise-address "$NODE_IP" --bind-address "$NODE_IP" --secure-port 6443 \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --client-ca-file "$d/ca.crt" --tls-cert-file "$d/apiserver.crt" --tls-private-key-file "$d/apiserver.key" \
    --kubelet-client-certificate "$d/apiserver-kubelet-client.crt" --kubelet-client-key "$d/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$d/ca.crt" --kubelet-preferred-address-types InternalIP \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$d/sa.pub" --service-account-signing-key-file "$d/sa.key" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --allow-privileged=true --enable-aggregator-routing=true
  wait_for kube-apiserver 60 kubectl get --raw /readyz
}

up() {
  down
  install_packages
  binaries
  local t0
  t0=$(date +%s)
  mkdir -p "$STATE"
  local s
  for s in "${KUBELET_SYSCTLS[@]}"; do echo "$s $(cat "/proc/sys/$s")"; done > "$STATE/host-sysctls"
  # The first `ip netns add` on a machine makes /run/netns a mount point of
  # its own, and iproute2 never undoes it.
  [ -d /run/netns ] || touch "$STATE/remove-run-netns"
  mountpoint -q /run/netns || touch "$STATE/unmount-run-netns"
  pki
  configs
  namespaces
  local d=$STATE/pki

  start_etcd
  start_apiserver
  start kube-controller-manager "$NODE_BIN/kube-controller-manager" \
    --kubeconfig "$STATE/controller-manager.kubeconfig" --bind-address 127.0.0.1 --leader-elect=false \
    --service-account-private-key-file "$d/sa.key" --root-ca-file "$d/ca.crt" \
    --use-service-account-credentials=true --cluster-name keepalive-local
  start kube-scheduler "$NODE_BIN/kube-scheduler" \
    --kubeconfig "$STATE/scheduler.kubeconfig" --bind-address 127.0.0.1 --leader-elect=false
  start containerd containerd --config "$STATE/containerd.toml"
  wait_for containerd 30 node_exec ctr --address /run/containerd/containerd.sock version
  local archive
  for archive in "$IMAGES"/*.tar; do
    [ -e "$archive" ] || { say "no image archives in $IMAGES (make image-archives)"; break; }
    node_exec ctr --address /run/containerd/containerd.sock -n k8s.io images import "$archive" >/dev/null
  done
  # grep reads the whole list: with -q it could stop early, and ctr would
  # fail on the closed pipe.
  node_exec ctr --address /run/containerd/containerd.sock -n k8s.io images ls -q | grep -x "$SANDBOX_IMAGE" >/dev/null ||
    die "the sandbox image $SANDBOX_IMAGE is not in the node's containerd: run make image-archives first"
  start kube-proxy "$NODE_BIN/kube-proxy" --config "$STATE/kube-proxy.yaml"
  start kubelet "$NODE_BIN/kubelet" --config "$STATE/kubelet.yaml" \
    --kubeconfig "$STATE/kubelet.kubeconfig" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP"
  wait_for "node $NODE_NAME" 90 kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=1s
  wait_for "service account token signer" 30 kubectl get serviceaccount default -n default
  say "up in $(( $(date +%s) - t0 ))s: KUBECONFIG=$STATE/kubeconfig, run clients with: $0 run CMD"
}

# --- teardown ----------------------------------------------------------------

# node_pids: every process in the node's namespaces or in a kubepods cgroup.
node_pids() {
  local net="" mnt="" p
  [ -e "$netns_file" ] && net=$(stat -L -c %i "$netns_file" 2>/dev/null || true)
  mountpoint -q "$mnt_file" 2>/dev/null && mnt=$(stat -L -c %i "$mnt_file" 2>/dev/null || true)
  for p in /proc/[0-9]*; do
    [ "${p#/proc/}" = "$$" ] && continue
    { [ -n "$net" ] && [ "$(stat -L -c %i "$p/ns/net" 2>/dev/null)" = "$net" ]; } ||
      { [ -n "$mnt" ] && [ "$(stat -L -c %i "$p/ns/mnt" 2>/dev/null)" = "$mnt" ]; } && echo "${p#/proc/}"
  done
  cat /sys/fs/cgroup/*/kubepods*/cgroup.procs /sys/fs/cgroup/*/kubepods*/*/cgroup.procs \
    /sys/fs/cgroup/*/kubepods*/*/*/cgroup.procs /sys/fs/cgroup/*/kubepods*/*/*/*/cgroup.procs 2>/dev/null || true
}

# stop_all stops every node process: SIGTERM, then SIGKILL after 5 seconds.
stop_all() {
  local pids="" seen="" i p=""
  # The kubelet first, so that it does not restart what is being stopped.
  if [ -f "$STATE/kubelet.pid" ]; then kill "$(cat "$STATE/kubelet.pid")" 2>/dev/null || true; fi
  for i in $(seq 40); do
    pids=$(node_pids | sort -u)
    [ -z "$pids" ] && break
    seen="$seen $pids"
    if [ "$i" -lt 20 ]; then
      # shellcheck disable=SC2086
      kill $pids 2>/dev/null || true
    else
      # shellcheck disable=SC2086
      kill -9 $pids 2>/dev/null || true
    fi
    sleep 0.25
  done
  [ -z "$pids" ] || die "processes still running: ${pids//$'\n'/ }"
  # The stopped processes are the children of init now: wait a little for
  # it to reap them, so that none is left even as a zombie.
  for i in $(seq 40); do
    for p in $seen; do [ -e "/proc/$p" ] && break; p=""; done
    [ -z "$p" ] && return 0
    sleep 0.25
  done
}

down() {
  stop_all
  local c
  for c in /sys/fs/cgroup/*/kubepods*; do
    if [ -d "$c" ]; then find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
    if [ -d "$c" ]; then die "could not remove the cgroup $c"; fi
  done
  if mountpoint -q "$mnt_file" 2>/dev/null; then umount -n "$mnt_file"; fi
  if mountpoint -q "$STATE/ns" 2>/dev/null; then umount -n "$STATE/ns"; fi
  if [ -e "$netns_file" ]; then ip netns del "$NETNS"; fi
  if [ -f "$STATE/unmount-run-netns" ] && [ -z "$(ls -A /run/netns)" ]; then umount -n /run/netns; fi
  if [ -f "$STATE/remove-run-netns" ] && [ -z "$(ls -A /run/netns)" ]; then rmdir /run/netns; fi
  if [ -f "$STATE/host-sysctls" ]; then
    local name value
    while read -r name value; do echo "$value" > "/proc/sys/$name"; done < "$STATE/host-sysctls"
  fi
  if grep -q " $STATE" /proc/mounts; then die "mounts under $STATE remain"; fi
  rm -rf "$STATE"
}

# --- one component at a time ---------------------------------------------------

# running NAME: the pid of component NAME if it runs, else nothing. A pid
# counts only while it lives in the node's network namespace and is no zombie,
# so that a pid reused by another process is never taken for it.
running() {
  local pid
  [ -f "$STATE/$1.pid" ] || return 0
  pid=$(cat "$STATE/$1.pid")
  [ "$(stat -L -c %i "/proc/$pid/ns/net" 2>/dev/null)" = "$(stat -L -c %i "$netns_file" 2>/dev/null)" ] || return 0
  [ "$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" != Z ] && echo "$pid"
  return 0
}

# The components `kill` and `start` act on.
restartable() {
  case $1 in
    etcd | kube-apiserver) ;;
    *) die "kill and start take etcd or kube-apiserver, not '$1'" ;;
  esac
}

kill_components() {
  [ $# -gt 0 ] || die "usage: $0 kill etcd|kube-apiserver..."
  local name pid i
  for name in "$@"; do
    restartable "$name"
    pid=$(running "$name")
    [ -n "$pid" ] || die "$name is not running"
    kill -9 "$pid"
  done
  # Once a process has ended the kernel has closed its sockets: a new one
  # can listen on its ports.
  for name in "$@"; do
    for i in $(seq 50); do
      [ -z "$(running "$name")" ] && break
      sleep 0.1
    done
    [ -z "$(running "$name")" ] || die "$name still runs after SIGKILL"
    say "killed $name"
  done
}

start_components() {
  [ $# -gt 0 ] || die "usage: $0 start etcd|kube-apiserver..."
  [ -e "$netns_file" ] || die "the cluster is down: $0 up"
  ENVTEST_BIN=$("$ROOT/hack/setup-envtest.sh")
  local name
  for name in "$@"; do
    restartable "$name"
    [ -z "$(running "$name")" ] || die "$name is running"
    case $name in
      etcd) start_etcd ;;
      kube-apiserver) start_apiserver ;;
    esac
    say "started $name"
  done
}

status() {
  if [ ! -e "$netns_file" ]; then echo "down"; return 0; fi
  ENVTEST_BIN=$("$ROOT/hack/setup-envtest.sh" 2>/dev/null)
  local name pid
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kube-proxy kubelet; do
    pid=$(running "$name")
    if [ -n "$pid" ]; then
      echo "$name: running (pid $pid)"
    else
      echo "$name: not running"
    fi
  done
  echo "KUBECONFIG=$STATE/kubeconfig"
  kubectl get nodes -o wide
}

case ${1:-} in
  up) up ;;
  down) down; say "down" ;;
  status) status ;;
  run) shift; exec nsenter --net="$netns_file" -- "$@" ;;
  kill) shift; kill_components "$@" ;;
  start) shift; start_components "$@" ;;
  *) die "usage: $0 up|down|status|run CMD...|kill NAME...|start NAME..." ;;
esac
