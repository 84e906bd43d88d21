#!/usr/bin/env bash
# Runs before `npm test` (npm's pretest hook): makes sure the real binaries the
# tests start are on this machine. On Debian as root it installs them; anywhere
# else it names the packages to install and fails, so no test is silently skipped.
set -euo pipefail

# command -> Debian package
declare -A NEEDED=(
  [promtool]=prometheus
  [prometheus]=prometheus
  [systemd-analyze]=systemd
  [redis-server]=redis-server
  [nginx]=nginx
  [haproxy]=haproxy
  [wrk]=wrk
  [strace]=strace
  [setpriv]=util-linux
  [unshare]=util-linux
  [prlimit]=util-linux
)

missing=()
for cmd in "${!NEEDED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEEDED[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages the tests need: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
else
  echo "the tests need these Debian packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
