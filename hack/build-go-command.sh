#!/usr/bin/env bash
# Builds a command of a Go module as its release is built, into OUT, and
# prints the module's source folder (for files beside the command):
#
#   hack/build-go-command.sh MODULE VERSION PACKAGE OUT
#
# The throwaway module takes the module's own go.mod, requirements and
# replace directives, so that the build takes the versions its release was
# built with. Progress goes to stderr.
set -euo pipefail

[ $# -eq 4 ] || { echo "usage: $0 MODULE VERSION PACKAGE OUT" >&2; exit 2; }
mod=$1 version=$2 pkg=$3 out=$4
die() { echo "build-go-command: error: $*" >&2; exit 1; }
command -v go >/dev/null || die "go is not on PATH"
case $out in /*) ;; *) out="$PWD/$out" ;; esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
printf 'module toolbuild\n\ngo 1.26\n' > go.mod
src=$(GOFLAGS=-mod=mod go mod download -json "$mod@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
[ -d "$src" ] || die "no source folder for $mod@$version"
sed -e "s#^module .*#module toolbuild#" "$src/go.mod" > go.mod
printf '\nrequire %s %s\n' "$mod" "$version" >> go.mod
printf '//go:build tools\n\npackage tools\n\nimport _ "%s/%s"\n' "$mod" "$pkg" > tools.go
GOFLAGS=-mod=mod go mod tidy > tidy.log 2>&1 || { cat tidy.log >&2; die "go mod tidy failed for $mod@$version"; }
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out" "$mod/$pkg" >&2 || die "building $mod/$pkg@$version failed"
echo "$src"
