#!/usr/bin/env bash
# KPOS field update: build signed releases and put them on terminals over SSH.
#
#   ./deploy.sh keygen [KEY]              make the release signing key (kept outside the repo)
#   ./deploy.sh build [--version V] [--platform host|aarch64|armv7l] [--mender] [--out DIR]
#                                         a signed release bundle dist/kpos-<V>.tar (+ .mender)
#   ./deploy.sh provision USER@HOST       first install on a fresh Raspberry Pi OS device
#   ./deploy.sh push USER@HOST [BUNDLE]   copy, verify, install, switch when idle, health
#                                         check; rolls back by itself when anything fails
#       [--port N] [-i KEY] [--stage-only (install, no switch)] [--no-echo (no echo test)]
#       [--idle-timeout S] [--ready-timeout S] [--health-timeout S]
#   ./deploy.sh status USER@HOST          releases, service, queue, last update
#   ./deploy.sh rollback USER@HOST        back to the previous release
#
# docs/deploy.md is the field engineer's guide; docs/fleet.md covers Mender fleets.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

say() { printf 'deploy: %s\n' "$*" >&2; }
die() { say "$1"; exit "${2:-1}"; }

usage() {
  sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  build|keygen)
    # shellcheck source=deploy/build.sh
    source "$REPO/deploy/build.sh" ;;
  push|status|rollback|provision)
    # shellcheck source=deploy/push.sh
    source "$REPO/deploy/push.sh" ;;
  -h|--help|help|"") usage ;;
  *) say "unknown command: $cmd"; usage ;;
esac
"deploy_$cmd" "$@"
