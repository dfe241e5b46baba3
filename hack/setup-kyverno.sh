#!/usr/bin/env bash
# Prints a folder holding Kyverno's admission controller (kyverno) and its
# CRDs (crds/), for `make bench-admission` with BENCH_KYVERNO=1. Progress goes
# to stderr, the folder to stdout.
#
# The binary is built from Kyverno's Go module as its release is
# (hack/build-go-command.sh), and cached outside the repository like the
# envtest binaries (several minutes on 2 cores the first time).
set -euo pipefail

KYVERNO_VERSION=${KYVERNO_VERSION:-v1.19.1}
ROOT=${KYVERNO_ROOT:-${XDG_DATA_HOME:-$HOME/.local/share}/keepalive-bench}
DEST="$ROOT/kyverno-$KYVERNO_VERSION-$(go env GOOS)-$(go env GOARCH)"
# Absolute: what reads the printed path runs in other folders.
case $DEST in /*) ;; *) DEST="$PWD/$DEST" ;; esac

say() { echo "setup-kyverno: $*" >&2; }
die() { say "error: $*"; exit 1; }

if [ -x "$DEST/kyverno" ] && [ -d "$DEST/crds" ]; then
  echo "$DEST"
  exit 0
fi
command -v go >/dev/null || die "go is not on PATH"

say "building Kyverno $KYVERNO_VERSION from its Go module; cached in $DEST"
# On any failure from here on, the half-built folder goes too.
trap 'rc=$?; if [ "$rc" -ne 0 ]; then rm -rf "$DEST.tmp"; say "error: building Kyverno $KYVERNO_VERSION failed"; fi' EXIT
rm -rf "$DEST.tmp"
start=$(date +%s)
mkdir -p "$DEST.tmp/crds"
src=$("$(dirname "$0")/build-go-command.sh" github.com/kyverno/kyverno "$KYVERNO_VERSION" cmd/kyverno "$DEST.tmp/kyverno")
# The CRDs the admission controller watches, as its release installs them.
find "$src/config/crds" -name '*.yaml' -exec cp {} "$DEST.tmp/crds/" \;
chmod -R u+w "$DEST.tmp"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
say "built in $(( $(date +%s) - start ))s"
echo "$DEST"
