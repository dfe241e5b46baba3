#!/usr/bin/env bash
# Prints the path of a promtool binary, for the chart's alert tests
# (make test). Progress goes to stderr, the path to stdout.
#
# promtool is built from Prometheus's Go module as its release is
# (hack/build-go-command.sh), and cached outside the repository like the
# envtest binaries (minutes on 2 cores the first time).
set -euo pipefail

PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-v0.316.0}
ROOT=${PROMTOOL_ROOT:-${XDG_DATA_HOME:-$HOME/.local/share}/keepalive-tools}
DEST="$ROOT/promtool-$PROMETHEUS_VERSION-$(go env GOOS)-$(go env GOARCH)"
# Absolute: what reads the printed path runs in other folders.
case $DEST in /*) ;; *) DEST="$PWD/$DEST" ;; esac

say() { echo "setup-promtool: $*" >&2; }
die() { say "error: $*"; exit 1; }

if [ -x "$DEST" ]; then
  echo "$DEST"
  exit 0
fi
command -v go >/dev/null || die "go is not on PATH"

say "building promtool from github.com/prometheus/prometheus $PROMETHEUS_VERSION; cached in $DEST"
trap 'rc=$?; rm -f "$DEST.tmp"; [ "$rc" -eq 0 ] || say "error: building promtool failed"' EXIT
start=$(date +%s)
mkdir -p "$ROOT"
"$(dirname "$0")/build-go-command.sh" github.com/prometheus/prometheus "$PROMETHEUS_VERSION" cmd/promtool "$DEST.tmp" >/dev/null
"$DEST.tmp" --version >/dev/null || die "the built promtool does not run"
mv "$DEST.tmp" "$DEST"
say "built in $(( $(date +%s) - start ))s"
echo "$DEST"
