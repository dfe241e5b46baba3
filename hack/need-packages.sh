#!/usr/bin/env bash
# Makes sure the commands a make target runs are installed:
#
#   hack/need-packages.sh [--root | --if-root] WHAT COMMAND...
#
# WHAT names the caller in messages ("make prove"); COMMAND is one of ip, ss
# (iproute2), sysctl (procps), nft (nftables), conntrack (conntrack), and for
# the lab's audit clients gcc (gcc), python3 (python3), node (nodejs), java
# and javac (default-jdk-headless), psql (postgresql-client), postgres and
# initdb (postgresql, which keeps them in /usr/lib/postgresql/<version>/bin,
# off PATH). As root
# it installs the Debian packages of the missing commands with apt-get; when
# nothing is missing it does nothing. Not root, it fails, naming what is
# missing and how to install it; with --root the caller needs root anyway and
# it fails when not root; with --if-root it only reports what is missing and
# succeeds (the tests that need it skip).
set -euo pipefail

mode=
case ${1:-} in --root | --if-root) mode=$1; shift ;; esac
[ $# -ge 2 ] || { echo "usage: $0 [--root | --if-root] WHAT COMMAND..." >&2; exit 2; }
what=$1
shift

say() { echo "need-packages: $*" >&2; }
list() { local s; s=$(printf '%s, ' "$@"); echo "${s%, }"; }

package() {
  case $1 in
    ip | ss) echo iproute2 ;;
    sysctl) echo procps ;;
    nft) echo nftables ;;
    conntrack) echo conntrack ;;
    gcc) echo gcc ;;
    python3) echo python3 ;;
    node) echo nodejs ;;
    java | javac) echo default-jdk-headless ;;
    psql) echo postgresql-client ;;
    postgres | initdb) echo postgresql ;;
    *) say "no Debian package known for the command $1"; exit 2 ;;
  esac
}

# installed CMD: on PATH, in the sbin folders a user's PATH often lacks, or
# in the folder of a PostgreSQL version's server programs.
installed() {
  command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ] || compgen -G "/usr/lib/postgresql/*/bin/$1" >/dev/null
}

missing=() packages=()
for cmd in "$@"; do
  pkg=$(package "$cmd")
  installed "$cmd" && continue
  missing+=("$cmd")
  [[ " ${packages[*]} " == *" $pkg "* ]] || packages+=("$pkg")
done

if [ "$(id -u)" != 0 ]; then
  cmds="" them=them
  [ ${#missing[@]} -eq 0 ] || cmds=$(list "${missing[@]}")
  [ ${#missing[@]} -ne 1 ] || them=it
  case $mode in
    --root)
      say "$what needs root${cmds:+, and $cmds (apt-get install ${packages[*]}), which it installs as root}: run it as root (sudo $what)"
      exit 1 ;;
    --if-root)
      [ -z "$cmds" ] || say "$what: missing $cmds (apt-get install ${packages[*]}); not root, so not installed: what needs $them skips"
      exit 0 ;;
  esac
  [ -z "$cmds" ] && exit 0
  say "$what needs $cmds: install $them (sudo apt-get install ${packages[*]}), or run $what as root, which does"
  exit 1
fi

[ ${#missing[@]} -eq 0 ] && exit 0
command -v apt-get >/dev/null || { say "$what needs $(list "${missing[@]}"), and there is no apt-get: install the packages that provide them"; exit 1; }
say "$what needs $(list "${missing[@]}"): installing $(list "${packages[@]}")"
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2
for cmd in "${missing[@]}"; do
  installed "$cmd" || { say "$cmd is still missing after installing $(package "$cmd")"; exit 1; }
done
