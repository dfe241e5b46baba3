#!/usr/bin/env bash
# Prints the path of a promtool binary, for the chart's alert tests
# (make test). Progress goes to stderr, the path to stdout.
#
# promtool is built from Prometheus's Go module in a throwaway module, with
# the requirements of Prometheus's own go.mod, and cached outside the
# repository like the envtest binaries (minutes on 2 cores the first time).
set -euo pipefail

PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-v0.316.0}
ROOT=${PROMTOOL_ROOT:-${XDG_DATA_HOME:-$HOME/.local/share}/keepalive-tools}
DEST="$ROOT/promtool-$PROMETHEUS_VERSION-$(go env GOOS)-$(go env GOARCH)"
# Absolute: the build below runs in another folder.
case $DEST in /*) ;; *) DEST="$PWD/$DEST" ;; esac

say() { echo "setup-promtool: $*" >&2; }
die() { say "error: $*"; exit 1; }

if [ -x "$DEST" ]; then
  echo "$DEST"
  exit 0
fi
command -v go >/dev/null || die "go is not on PATH"

say "building promtool from github.com/prometheus/prometheus $PROMETHEUS_VERSION; cached in $DEST"
work=$(mktemp -d)
trap 'rc=$?; rm -rf "$work"; rm -f "$DEST.tmp"; [ "$rc" -eq 0 ] || say "error: building promtool failed"' EXIT
start=$(date +%s)
mod=github.com/prometheus/prometheus
mkdir -p "$ROOT"
# A command of its own, so that set -e holds inside (see setup-kyverno.sh).
(
  cd "$work"
  printf 'module promtoolbuild\n\ngo 1.26\n' > go.mod
  GOFLAGS=-mod=mod go mod download -json "$mod@$PROMETHEUS_VERSION" > download.json
  src=$(sed -n 's/^\t"Dir": "\(.*\)",$/\1/p' download.json)
  [ -d "$src" ] || die "no source folder for $mod@$PROMETHEUS_VERSION"
  # Prometheus's requirements, so that the build takes the versions its
  # release was built with.
  sed -e "s#^module .*#module promtoolbuild#" "$src/go.mod" > go.mod
  printf '\nrequire %s %s\n' "$mod" "$PROMETHEUS_VERSION" >> go.mod
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s/cmd/promtool"\n' "$mod" > tools.go
  GOFLAGS=-mod=mod go mod tidy > tidy.log 2>&1 || { cat tidy.log >&2; exit 1; }
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$DEST.tmp" "$mod/cmd/promtool" >&2
)
"$DEST.tmp" --version >/dev/null || die "the built promtool does not run"
mv "$DEST.tmp" "$DEST"
say "built in $(( $(date +%s) - start ))s"
echo "$DEST"
