#!/bin/bash
# KPOS: first-boot provisioning of a Raspberry Pi OS (Bookworm) terminal. Idempotent: each
# step checks the target first, so running it again changes nothing that is already done
# (a config or key in /etc/kpos is never overwritten).
#
# Usage (as root, from an unpacked release or a checkout: the folder holding boot/):
#   boot/provision.sh [--dry-run] [--root DIR] [--release FILE] [--version V]
#     --dry-run       print the plan ("+ command" lines), change nothing
#     --root DIR      provision the system mounted at DIR (an SD card image) instead of /
#                     (apt-get and useradd then run in chroot DIR; no udevadm, no daemon-reload)
#     --release FILE  install this wheel or sdist (kpos-<v>...); default: this source folder
#     --version V     the release folder's name; default: pyproject.toml's version
# Result: apt packages; user and group kpos (in gpio spi i2c dialout lp plugdev input);
# /etc/kpos (0755) with keys/ (0700 kpos), /var/lib/kpos (0700 kpos); the release in
# /opt/kpos/releases/<v>/.venv, /opt/kpos/current -> releases/<v>; units, udev rules and
# the config.txt fragment installed; kpos.service, kpos-backup.timer and pcscd enabled.
# The terminal starts at the next boot once its master key is loaded (`kpos keys load`).
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=/
DRY=0
RELEASE=""
VERSION=""
APT_PACKAGES=(pcscd libpcsclite1 libpcsclite-dev pcsc-tools swig python3-venv python3-dev
              build-essential liblgpio-dev libusb-1.0-0 i2c-tools fonts-noto-cjk sqlite3)
GROUPS_WANTED=(gpio spi i2c dialout lp plugdev input)

die() { echo "provision: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --root) ROOT=${2:?--root needs a folder}; shift ;;
        --release) RELEASE=${2:?--release needs a file}; shift ;;
        --version) VERSION=${2:?--version needs a value}; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
ROOT=${ROOT%/}
[ -n "$VERSION" ] || VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$SRC/pyproject.toml")
[[ "$VERSION" =~ ^[0-9A-Za-z.+_-]+$ ]] || die "cannot tell the release version: give --version"
[ "$DRY" = 1 ] || [ "$(id -u)" = 0 ] || die "run as root (or with --dry-run)"

REL=/opt/kpos/releases/$VERSION

run() {  # print the command; run it unless --dry-run
    echo "+ $*"
    [ "$DRY" = 1 ] || "$@"
}

in_root() {  # a command that acts on the target system
    if [ -z "$ROOT" ]; then run "$@"; else run chroot "$ROOT" "$@"; fi
}

step() { echo "== $*"; }

packages() {
    step "apt packages"
    in_root apt-get update
    in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        "${APT_PACKAGES[@]}"
}

user() {
    step "user kpos"
    if ! grep -q '^kpos:' "$ROOT/etc/passwd" 2>/dev/null; then
        in_root useradd --system --user-group --home-dir /var/lib/kpos --no-create-home \
            --shell /usr/sbin/nologin kpos
    fi
    local group
    for group in "${GROUPS_WANTED[@]}"; do
        if grep -q "^$group:" "$ROOT/etc/group" 2>/dev/null \
                && ! grep -Eq "^$group:[^:]*:[^:]*:(.*,)?kpos(,|$)" "$ROOT/etc/group"; then
            in_root usermod --append --groups "$group" kpos
        fi
    done
}

directories() {
    step "directories"
    run install -d -m 0755 "$ROOT/etc/kpos" "$ROOT/opt/kpos/releases"
    run install -d -m 0700 "$ROOT/etc/kpos/keys" "$ROOT/var/lib/kpos"
    in_root chown kpos:kpos /etc/kpos/keys /var/lib/kpos
    local file
    for file in terminal.toml capk.toml; do
        [ -e "$ROOT/etc/kpos/$file" ] || run install -m 0644 "$SRC/config/$file" "$ROOT/etc/kpos/$file"
    done
}

release() {
    step "release $VERSION"
    if [ ! -x "$ROOT$REL/.venv/bin/kpos" ]; then
        local artefact=${RELEASE:-$SRC}
        if [ -n "$ROOT" ]; then  # pip runs inside the target: the wheel goes there first
            [ -f "$RELEASE" ] || die "--root needs --release FILE (a wheel or sdist)"
            run install -D -m 0644 "$RELEASE" "$ROOT$REL/${RELEASE##*/}"
            artefact=$REL/${RELEASE##*/}
        fi
        in_root python3 -m venv "$REL/.venv"
        in_root "$REL/.venv/bin/pip" install --no-cache-dir "$artefact[pi,pcsc]"
    fi
    run install -d -m 0755 "$ROOT$REL/docs" "$ROOT$REL/boot"
    run install -m 0644 "$SRC/docs/hardware.md" "$ROOT$REL/docs/hardware.md"
    run install -m 0644 "$SRC/boot/kpos.service" "$SRC/boot/kpos-backup.service" \
        "$SRC/boot/kpos-backup.timer" "$SRC/boot/99-kpos.rules" "$SRC/boot/config.txt.fragment" \
        "$ROOT$REL/boot/"
    if [ "$(readlink "$ROOT/opt/kpos/current" 2>/dev/null)" != "releases/$VERSION" ]; then
        run ln -sfn "releases/$VERSION" "$ROOT/opt/kpos/current.new"
        run mv -T "$ROOT/opt/kpos/current.new" "$ROOT/opt/kpos/current"
    fi
}

system_files() {
    step "units, udev rules, Raspberry Pi config"
    run install -m 0644 "$SRC/boot/kpos.service" "$SRC/boot/kpos-backup.service" \
        "$SRC/boot/kpos-backup.timer" "$ROOT/etc/systemd/system/"
    run install -m 0644 "$SRC/boot/99-kpos.rules" "$ROOT/etc/udev/rules.d/99-kpos.rules"
    # Mender-managed fleets (docs/fleet.md): the kpos update module, once the client is there
    local module=$SRC/device/mender-kpos
    [ -f "$module" ] || module=$SRC/deploy/mender/kpos
    if [ -d "$ROOT/usr/share/mender/modules/v3" ]; then
        run install -m 0755 "$module" "$ROOT/usr/share/mender/modules/v3/kpos"
    fi
    local config=$ROOT/boot/firmware/config.txt cmdline=$ROOT/boot/firmware/cmdline.txt
    [ -e "$config" ] || config=$ROOT/boot/config.txt cmdline=$ROOT/boot/cmdline.txt
    if ! grep -q '^# BEGIN KPOS' "$config" 2>/dev/null; then
        echo "+ sed -n '/^# BEGIN KPOS/,/^# END KPOS/p' $SRC/boot/config.txt.fragment >> $config"
        [ "$DRY" = 1 ] || sed -n '/^# BEGIN KPOS/,/^# END KPOS/p' "$SRC/boot/config.txt.fragment" >> "$config"
    fi
    if grep -q 'console=serial0,[0-9]* *' "$cmdline" 2>/dev/null; then
        run sed -i 's/console=serial0,[0-9]* *//' "$cmdline"  # the UART is the printer's
    fi
}

services() {
    step "services"
    if [ -z "$ROOT" ]; then
        run udevadm control --reload
        run udevadm trigger
        run systemctl daemon-reload
        run systemctl enable pcscd.socket kpos.service kpos-backup.timer
    else
        run systemctl --root="$ROOT" enable pcscd.socket kpos.service kpos-backup.timer
    fi
    [ -e "$ROOT/var/lib/kpos/keys/tmk" ] \
        || echo "next: load the terminal master key (sudo -u kpos kpos keys load ...)," \
                "edit /etc/kpos/terminal.toml, run kpos doctor, then reboot"
}

packages
user
directories
release
system_files
services
if [ "$DRY" = 1 ]; then echo "provision: dry run, nothing changed"; else echo "provision: done"; fi
