#!/usr/bin/env bash
# Builds commands of k8s.io/kubernetes (kube-apiserver, kubelet, ...) from Go
# modules into a folder: hack/build-k8s.sh VERSION DEST CMD...
# The module proxy serves k8s.io/kubernetes, but it replaces its staging
# modules with local folders, so the throwaway module that requires it must
# replace each of them with the published module of the same release.
set -euo pipefail

version=$1 dest=$2
shift 2
say() { echo "build-k8s: $*" >&2; }
die() { say "error: $*"; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
k8s_mod=$(cd "$work" && go mod download -json "k8s.io/kubernetes@v$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[ -f "$k8s_mod" ] || die "could not download k8s.io/kubernetes@v$version from the module proxy"
staging_version="v0.${version#1.}"
{
  echo "module k8sbuild"
  echo "go $(go env GOVERSION | sed 's/^go//; s/^\([0-9]*\.[0-9]*\).*/\1/')"
  echo "require k8s.io/kubernetes v$version"
  echo "replace ("
  sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$k8s_mod" |
    while read -r m; do
      # Only the staging modules k8s.io/kubernetes requires are published for every release.
      grep -q "^[[:space:]]*$m v" "$k8s_mod" && echo "	$m => $m $staging_version"
    done
  echo ")"
} > "$work/go.mod"
{
  printf '//go:build tools\n\npackage tools\n\nimport (\n'
  for cmd in "$@"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$cmd"; done
  printf ')\n'
} > "$work/tools.go"

minor=$(echo "$version" | cut -d. -f2)
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=v$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
cd "$work"
say "resolving k8s.io/kubernetes v$version modules"
GOFLAGS=-mod=mod go mod tidy >"$work/tidy.log" 2>&1 || { cat "$work/tidy.log" >&2; die "go mod tidy failed for k8s.io/kubernetes v$version"; }
mkdir -p "$dest"
for cmd in "$@"; do
  say "building $cmd"
  CGO_ENABLED=0 go build -ldflags "$ldflags" -o "$dest/$cmd" "k8s.io/kubernetes/cmd/$cmd" >&2 || die "building $cmd v$version failed"
done
