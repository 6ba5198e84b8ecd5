#!/usr/bin/env bash
# KPOS developer entry point: sets up a fresh Debian/Ubuntu machine, then runs one thing.
#   ./dev.sh sim [kpos sim args]   start the simulated terminal (acquirer on loopback)
#   ./dev.sh test [pytest args]    run the test suite
# Installs missing apt packages (with sudo when not root) and creates .venv on first use;
# later runs reuse them and reinstall Python packages only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")"

# pcscd + vsmartcard-vpcd: the real PC/SC stack the tests drive; libpcsclite-dev + swig build pyscard;
# fonts-wqy-microhei: the CJK font Chinese screens are drawn with (as on a provisioned Pi).
APT_PACKAGES=(python3 python3-venv python3-dev gcc pcscd vsmartcard-vpcd libpcsclite-dev swig
              fonts-wqy-microhei)
# The tests only: deploy.sh is tested against a real sshd on 127.0.0.1 (openssh-server,
# rsync, openssl for the release signature) and builds a Mender artifact (mender-artifact);
# the simulator's browser panel is tested in headless Chromium (chromium, driven by Playwright).
APT_TEST_PACKAGES=(openssh-server openssh-client rsync openssl mender-artifact chromium)
VENV=.venv

say() { printf '\033[1mdev.sh:\033[0m %s\n' "$*" >&2; }

need_apt() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || { say "missing ${missing[*]} and no apt-get: install them by hand"; exit 2; }
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  say "installing ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pick_python() {
  for py in python3.13 python3.12 python3.11 python3; do
    if command -v "$py" >/dev/null && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  say "Python 3.11 or newer is needed"; exit 2
}

setup_venv() {
  local extras="$1" py stamp want
  py=$(pick_python)
  if [ ! -x "$VENV/bin/python" ]; then
    "$py" -m venv "$VENV" 2>/dev/null || { need_apt; "$py" -m venv "$VENV"; }
  fi
  want="$(sha256sum pyproject.toml | cut -c1-16)-$extras"
  stamp="$VENV/.kpos-installed"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing Python packages into $VENV ($extras)"
    if ! { "$VENV/bin/python" -m pip install -q --upgrade pip &&
           "$VENV/bin/python" -m pip install -q -e ".[$extras]"; } >"$VENV/pip.log" 2>&1; then
      cat "$VENV/pip.log" >&2; say "pip install failed (log above, also in $VENV/pip.log)"; exit 2
    fi
    echo "$want" > "$stamp"
  fi
}

cmd="${1:-}"; shift || true
case "$cmd" in
  sim)
    need_apt; setup_venv test
    exec "$VENV/bin/kpos" sim "$@" ;;
  test)
    APT_PACKAGES+=("${APT_TEST_PACKAGES[@]}")
    need_apt; setup_venv test
    exec "$VENV/bin/python" -m pytest "$@" ;;
  *)
    echo "usage: ./dev.sh sim|test [args]"; exit 2 ;;
esac
