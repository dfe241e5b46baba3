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

# kube-apiserver and kubectl: k8s.io/kubernetes replaces its staging modules
# with local folders, so a module that requires it must replace each of them
# with the published module of the same release.
k8s_mod=$(cd "$work" && go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[ -f "$k8s_mod" ] || die "could not download k8s.io/kubernetes@v$K8S_VERSION from the module proxy"
staging_version="v0.${K8S_VERSION#1.}"
mkdir -p "$work/k8s" "$work/etcd" "$DEST.tmp"
{
  echo "module envtestbuild"
  echo "go $(go env GOVERSION | sed 's/^go//; s/^\([0-9]*\.[0-9]*\).*/\1/')"
  echo "require k8s.io/kubernetes v$K8S_VERSION"
  echo "replace ("
  sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$k8s_mod" |
    while read -r m; do
      # Only the staging modules k8s.io/kubernetes requires are published for every release.
      grep -q "^[[:space:]]*$m v" "$k8s_mod" && echo "	$m => $m $staging_version"
    done
  echo ")"
} > "$work/k8s/go.mod"
cat > "$work/k8s/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
minor=$(echo "$K8S_VERSION" | cut -d. -f2)
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
(
  cd "$work/k8s"
  say "resolving k8s.io/kubernetes v$K8S_VERSION modules"
  GOFLAGS=-mod=mod go mod tidy >"$work/tidy.log" 2>&1 || { cat "$work/tidy.log" >&2; die "go mod tidy failed for k8s.io/kubernetes v$K8S_VERSION"; }
  say "building kube-apiserver"
  CGO_ENABLED=0 go build -ldflags "$ldflags" -o "$DEST.tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver >&2
  say "building kubectl"
  CGO_ENABLED=0 go build -ldflags "$ldflags" -o "$DEST.tmp/kubectl" k8s.io/kubernetes/cmd/kubectl >&2
) || die "building Kubernetes $K8S_VERSION binaries failed"

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
