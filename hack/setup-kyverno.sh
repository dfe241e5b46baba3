#!/usr/bin/env bash
# Prints a folder holding Kyverno's admission controller (kyverno) and its
# CRDs (crds/), for `make bench-admission` with BENCH_KYVERNO=1. Progress goes
# to stderr, the folder to stdout.
#
# The binary is built from Kyverno's Go module in a throwaway module, with
# the replace directive of Kyverno's own go.mod, and cached outside the
# repository like the envtest binaries (several minutes on 2 cores the first
# time).
set -euo pipefail

KYVERNO_VERSION=${KYVERNO_VERSION:-v1.19.1}
ROOT=${KYVERNO_ROOT:-${XDG_DATA_HOME:-$HOME/.local/share}/keepalive-bench}
DEST="$ROOT/kyverno-$KYVERNO_VERSION-$(go env GOOS)-$(go env GOARCH)"
# Absolute: the build below runs in another folder.
case $DEST in /*) ;; *) DEST="$PWD/$DEST" ;; esac

say() { echo "setup-kyverno: $*" >&2; }
die() { say "error: $*"; exit 1; }

if [ -x "$DEST/kyverno" ] && [ -d "$DEST/crds" ]; then
  echo "$DEST"
  exit 0
fi
command -v go >/dev/null || die "go is not on PATH"

say "building Kyverno $KYVERNO_VERSION from its Go module; cached in $DEST"
work=$(mktemp -d)
# On any failure from here on, the half-built folder goes too.
trap 'rc=$?; rm -rf "$work"; if [ "$rc" -ne 0 ]; then rm -rf "$DEST.tmp"; say "error: building Kyverno $KYVERNO_VERSION failed"; fi' EXIT
rm -rf "$DEST.tmp"
start=$(date +%s)
mod=github.com/kyverno/kyverno
# A command of its own, so that set -e holds inside: bash ignores it in a
# command on the left of || or &&, and the subshell would carry on past a
# failed go build.
(
  cd "$work"
  printf 'module kyvernobuild\n\ngo 1.26\n' > go.mod
  GOFLAGS=-mod=mod go mod download -json "$mod@$KYVERNO_VERSION" > download.json
  src=$(sed -n 's/^\t"Dir": "\(.*\)",$/\1/p' download.json)
  [ -d "$src" ] || die "no source folder for $mod@$KYVERNO_VERSION"
  # Kyverno's requirements and replace directives, so that the build takes
  # the versions Kyverno's release was built with.
  sed -e "s#^module .*#module kyvernobuild#" "$src/go.mod" > go.mod
  printf '\nrequire %s %s\n' "$mod" "$KYVERNO_VERSION" >> go.mod
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s/cmd/kyverno"\n' "$mod" > tools.go
  GOFLAGS=-mod=mod go mod tidy > tidy.log 2>&1 || { cat tidy.log >&2; exit 1; }
  mkdir -p "$DEST.tmp/crds"
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$DEST.tmp/kyverno" "$mod/cmd/kyverno" >&2
  # The CRDs the admission controller watches, as its release installs them.
  find "$src/config/crds" -name '*.yaml' -exec cp {} "$DEST.tmp/crds/" \;
  chmod -R u+w "$DEST.tmp"
)
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
say "built in $(( $(date +%s) - start ))s"
echo "$DEST"
