#!/usr/bin/env bash
# Builds kubectl-keepalive for each OS/ARCH given, as a release ships it:
# OUT/kubectl-keepalive_<os>_<arch>.tar.gz (the static binary alone, with
# fixed owners and times, so that the same commit gives the same archive),
# OUT/checksums.txt (sha256sum format) and OUT/keepalive.yaml, the krew
# plugin manifest whose URIs point at the release VERSION.
#
#   hack/plugin-release.sh VERSION OUT linux/amd64 darwin/arm64 ...
set -euo pipefail

[ $# -ge 3 ] || { echo "usage: $0 VERSION OUT OS/ARCH..." >&2; exit 2; }
version=$1 out=$2
shift 2
repo=github.com/keepalive-operator/keepalive-operator
cd "$(dirname "$0")/.."
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The commit's time, so that the archives do not change with the clock.
mtime=$(git log -1 --format=%cI 2>/dev/null || echo 2026-01-01T00:00:00Z)

platforms=()
: > "$out/checksums.txt"
for platform in "$@"; do
  os=${platform%/*} arch=${platform#*/}
  [ "$os/$arch" = "$platform" ] && [ -n "$os" ] && [ -n "$arch" ] || { echo "not OS/ARCH: $platform" >&2; exit 2; }
  name=kubectl-keepalive_${os}_${arch}
  mkdir -p "$work/$name"
  CGO_ENABLED=0 GOOS=$os GOARCH=$arch go build -trimpath -ldflags "-s -w" -o "$work/$name/kubectl-keepalive" ./cmd/kubectl-keepalive
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="$mtime" -C "$work/$name" -cf - kubectl-keepalive | gzip -n > "$out/$name.tar.gz"
  (cd "$out" && sha256sum "$name.tar.gz") >> "$out/checksums.txt"
  platforms+=("$os $arch $name.tar.gz $(sha256sum "$out/$name.tar.gz" | cut -d' ' -f1)")
  echo "plugin-release: $out/$name.tar.gz" >&2
done

{
  cat <<YAML
apiVersion: krew.googlecontainertools.github.com/v1alpha2
kind: Plugin
metadata:
  name: keepalive
spec:
  version: $version
  homepage: https://$repo
  shortDescription: Explain, plan and render keepalive-operator's TCP keepalive sysctls
  description: |
    The kubectl plugin of keepalive-operator, which keeps idle TCP connections
    of pods alive through cloud load balancers and NAT gateways. explain tells
    why a pod or workload has or lacks the keepalive sysctls; plan shows what a
    policy would do before it is applied; render writes the values into
    manifests for Git.
  platforms:
YAML
  for p in "${platforms[@]}"; do
    read -r os arch file sum <<<"$p"
    cat <<YAML
  - selector:
      matchLabels:
        os: $os
        arch: $arch
    uri: https://$repo/releases/download/$version/$file
    sha256: $sum
    bin: kubectl-keepalive
YAML
  done
} > "$out/keepalive.yaml"
echo "plugin-release: $out/keepalive.yaml" >&2
