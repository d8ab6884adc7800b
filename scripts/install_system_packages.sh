#!/usr/bin/env bash
# Debian packages the stack runs (redis-server, nginx, spiped), benchmarks use (wrk) and the
# browser tests drive (chromium: server/tests/test_browser.py, through playwright); shellcheck
# lints scripts/*.sh (test_release_script.py).
# Installs only what is missing, so repeated runs are quick and need no network.
set -euo pipefail
needed=()
command -v redis-server >/dev/null || needed+=(redis-server)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || needed+=(nginx)
command -v spiped >/dev/null || needed+=(spiped)
command -v wrk >/dev/null || needed+=(wrk)
command -v shellcheck >/dev/null || needed+=(shellcheck)
[ -x /usr/bin/chromium ] || needed+=(chromium)
python3 -c 'import venv, ensurepip' 2>/dev/null || needed+=(python3-venv)
[ ${#needed[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${needed[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${needed[@]}"
