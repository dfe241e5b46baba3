#!/usr/bin/env bash
# Prints a folder holding kube-apiserver, etcd and kubectl for envtest, to be
# used as KUBEBUILDER_ASSETS. Progress goes to stderr, the folder to stdout.
#
# Order: KUBEBUILDER_ASSETS when it already holds the binaries; the cache;
# setup-envtest when it can download; otherwise build the binaries from Go
# modules (a few minutes on 2 cores the first time) and cache them outside the
# repository.
set -euo pipefail

K8S_VERSION=${ENVTEST_K8S_VERSION:-1.36.3}
ETCD_VERSION=${ENVTEST_ETCD_VERSION:-3.6.16}
SETUP_ENVTEST_VERSION=${SETUP_ENVTEST_VERSION:-v0.25.1}
GOOS=$(go env GOOS)
GOARCH=$(go env GOARCH)
ROOT=${ENVTEST_ASSETS_ROOT:-${XDG_DATA_HOME:-$HOME/.local/share}/kubebuilder-envtest}
DEST="$ROOT/k8s/$K8S_VERSION-$GOOS-$GOARCH"

say() { echo "setup-envtest: $*" >&2; }
die() { say "error: $*"; exit 1; }
complete() { [ -x "$1/kube-apiserver" ] && [ -x "$1/etcd" ] && [ -x "$1/kubectl" ]; }

if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
  complete "$KUBEBUILDER_ASSETS" || die "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks kube-apiserver, etcd or kubectl"
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

if complete "$DEST"; then
  echo "$DEST"
  exit 0
fi

command -v go >/dev/null || die "go is not on PATH"

say "trying setup-envtest $SETUP_ENVTEST_VERSION for Kubernetes $K8S_VERSION"
errlog=$(mktemp)
if dir=$(timeout 120 go run "sigs.k8s.io/controller-runtime/tools/setup-envtest@$SETUP_ENVTEST_VERSION" \
    use "$K8S_VERSION" --bin-dir "$ROOT" -p path 2>"$errlog") && complete "$dir"; then
  rm -f "$errlog"
  echo "$dir"
  exit 0
fi
say "setup-envtest failed: $(grep -v '^go: downloading' "$errlog" | head -n 1)"
rm -f "$errlog"

say "building kube-apiserver, kubectl and etcd from Go modules instead"
say "this takes about 5 minutes on 2 cores the first time and is cached in $DEST"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)

mkdir -p "$work/etcd"
"$(dirname "$0")/build-k8s.sh" "$K8S_VERSION" "$DEST.tmp" kube-apiserver kubectl

(
  cd "$work/etcd"
  printf 'module etcdbuild\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 v%s\n' "$ETCD_VERSION" > go.mod
  printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
  say "building etcd $ETCD_VERSION"
  GOFLAGS=-mod=mod go mod tidy >"$work/tidy-etcd.log" 2>&1 || { cat "$work/tidy-etcd.log" >&2; exit 1; }
  CGO_ENABLED=0 go build -ldflags "-s -w" -o "$DEST.tmp/etcd" go.etcd.io/etcd/server/v3 >&2
) || die "building etcd $ETCD_VERSION failed"

"$DEST.tmp/kube-apiserver" --version >&2
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
say "built in $(( $(date +%s) - start ))s"
echo "$DEST"
