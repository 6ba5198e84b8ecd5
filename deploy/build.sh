# KPOS release bundle: `./deploy.sh build` and `./deploy.sh keygen` (sourced by deploy.sh).
#
# build: stages the work tree's files (git ls-files --cached --others --exclude-standard: tracked
# plus new, not-ignored files, never the repo itself), builds the kpos wheel and a wheelhouse of
# every dependency except the hardware libraries the device takes from apt, signs a sha256
# MANIFEST with ed25519 and writes DIR/kpos-<V>.tar (+ DIR/kpos-<V>.mender with --mender).
# Layout: VERSION, release.json, wheels/, config/, boot/, device/kpos-device + mender-kpos, MANIFEST(.sig). Blocking; needs git, openssl and pip's index
# (its cache keeps rebuilds quick). Exit 1 with a one-line reason on any failure.
# keygen: makes the ed25519 signing key (0600) and KEY.pub; refuses to overwrite either.
# Uses say/die/$REPO from deploy.sh; set -euo pipefail is on.

# Compiled hardware libraries: the device's apt (or provision) installs them, the release
# venv sees them through --system-site-packages. Pure-Python device libraries (gpiozero,
# pyusb, smbus2, luma) travel in the wheelhouse.
HARDWARE_LIBS=(lgpio rpi-gpio rpi-lgpio pyscard evdev spidev)
MENDER_DEVICE_TYPES=(raspberrypi4 raspberrypi5)

default_signing_key() { printf '%s\n' "${KPOS_SIGNING_KEY:-$HOME/.config/kpos/release-signing.pem}"; }

deploy_keygen() {
  local key="${1:-$(default_signing_key)}"
  [ $# -le 1 ] || die "usage: ./deploy.sh keygen [KEY]" 2
  [ -e "$key" ] && die "$key already exists: not overwriting a signing key"
  [ -e "$key.pub" ] && die "$key.pub already exists: not overwriting it"
  (umask 077 && mkdir -p "$(dirname "$key")" && openssl genpkey -algorithm ed25519 -out "$key") \
    || die "openssl could not make $key"
  chmod 0600 "$key"
  openssl pkey -in "$key" -pubout -out "$key.pub" || die "openssl could not write $key.pub"
  say "signing key $key (keep it off the repo and backed up), public key $key.pub"
  printf 'SHA256:%s\n' "$(public_key_fingerprint "$key.pub")"
}

# sha256 of the public key's DER form (what `openssl pkey -pubin -outform DER` gives).
public_key_fingerprint() {
  openssl pkey -pubin -in "$1" -outform DER | sha256sum | cut -d' ' -f1
}

# The signing key, refused when missing, inside the repo or readable by group/others.
signing_key() {
  local key mode
  key="$(default_signing_key)"
  [ -f "$key" ] || die "no signing key at $key: make one with ./deploy.sh keygen or set KPOS_SIGNING_KEY"
  key="$(realpath "$key")"
  case "$key/" in
    "$(realpath "$REPO")"/*) die "signing key $key is inside the repository: move it out (and rotate it)" ;;
  esac
  mode="$(stat -c %a "$key")"
  (( (8#$mode & 8#077) == 0 )) || die "signing key $key has mode $mode: chmod 600 it"
  printf '%s\n' "$key"
}

build_python() {
  if [ -x "$REPO/.venv/bin/python" ]; then
    printf '%s\n' "$REPO/.venv/bin/python"
  else
    say "no $REPO/.venv (run ./dev.sh test once); using python3"
    command -v python3 || die "python3 not found"
  fi
}

deploy_build() {
  local version="" platform="aarch64" mender=0 out="$REPO/dist" key py work
  local device_types=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --version) version="${2:?--version needs a value}"; shift ;;
      --platform) platform="${2:?--platform needs host, aarch64 or armv7l}"; shift ;;
      --mender) mender=1 ;;
      --device-type) device_types+=("${2:?--device-type needs a value}"); shift ;;
      --out) out="${2:?--out needs a folder}"; shift ;;
      *) die "build: unknown option $1 (./deploy.sh --help)" 2 ;;
    esac
    shift
  done
  case "$platform" in host|aarch64|armv7l) ;; *) die "build: --platform is host, aarch64 or armv7l, not $platform" 2 ;; esac
  [ ${#device_types[@]} -gt 0 ] || device_types=("${MENDER_DEVICE_TYPES[@]}")
  key="$(signing_key)"
  py="$(build_python)"
  work="$(mktemp -d)"
  # shellcheck disable=SC2064  # expand now: $work is local
  trap "rm -rf '$work'" EXIT
  stage_sources "$work/src"
  version="$(set_version "$py" "$work/src" "$version")"
  local bundle="$work/out/kpos-$version"
  mkdir -p "$bundle/wheels" "$bundle/device"
  build_wheels "$py" "$work/src" "$bundle/wheels" "$platform" "$version"
  cp -R "$work/src/config" "$work/src/boot" "$bundle/"
  [ -f "$work/src/deploy/device/kpos-device" ] \
    || die "deploy/device/kpos-device is missing: every bundle carries the device-side updater"
  install -m 0755 "$work/src/deploy/device/kpos-device" "$bundle/device/kpos-device"
  # the Mender update module, for boot/provision.sh to install on Mender-managed terminals
  install -m 0755 "$work/src/deploy/mender/kpos" "$bundle/device/mender-kpos"
  printf '%s\n' "$version" > "$bundle/VERSION"
  write_release_json "$py" "$work/src" "$bundle" "$version" "$platform"
  write_manifest "$bundle"
  openssl pkeyutl -sign -rawin -inkey "$key" -in "$bundle/MANIFEST" -out "$bundle/MANIFEST.sig" \
    || die "openssl could not sign MANIFEST with $key (an ed25519 key from ./deploy.sh keygen?)"
  mkdir -p "$out"
  local tar="$out/kpos-$version.tar"
  tar -C "$work/out" --sort=name --owner=0 --group=0 --numeric-owner -cf "$tar.part" "kpos-$version"
  mv -f "$tar.part" "$tar"
  say "bundle $tar ($(stat -c %s "$tar") bytes, sha256 $(sha256sum "$tar" | cut -d' ' -f1))"
  if [ "$mender" = 1 ]; then
    write_mender "$tar" "$version" "$work" "${device_types[@]}"
  fi
  printf '%s\n' "$tar"
}

# Copies tracked and new not-ignored files as they are in the work tree (deleted ones skipped).
stage_sources() {
  local dest="$1" list="$1.list" f
  mkdir -p "$dest"
  git -C "$REPO" ls-files -z --cached --others --exclude-standard | sort -zu |
    while IFS= read -r -d '' f; do
      if [ -e "$REPO/$f" ]; then printf '%s\0' "$f"; fi
    done > "$list"
  tar -C "$REPO" --null -T "$list" -cf - | tar -C "$dest" -xf -
}

# Prints the release version: --version (PEP 440, canonical form) written into the staged
# pyproject.toml, or the pyproject's own.
set_version() {
  local py="$1" src="$2" version="$3"
  if [ -n "$version" ]; then
    "$py" - "$version" <<'EOF' \
      || die "--version $version refused: not a PEP 440 version in canonical form (e.g. 0.2.0+t2)"
import sys
from pip._vendor.packaging.version import InvalidVersion, Version
try:
    canonical = str(Version(sys.argv[1]))
except InvalidVersion:
    sys.exit(1)
if canonical != sys.argv[1]:
    sys.exit(f"deploy: write --version as {canonical}")
EOF
    sed -i "0,/^version = \".*\"/s//version = \"$version\"/" "$src/pyproject.toml"
  fi
  "$py" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$src/pyproject.toml"
}

# The kpos wheel plus every dependency (and the `pi` extra) but the hardware libraries;
# compiled wheels are swapped for the device platform's binary wheels.
build_wheels() {
  local py="$1" src="$2" wheels="$3" platform="$4" version="$5" reqs="$2.requirements"
  say "building kpos $version and its wheelhouse (platform $platform)"
  quietly "$src.log" "$py" -m pip wheel -q --no-deps -w "$wheels" "$src" || die "the kpos wheel did not build"
  [ -f "$wheels/kpos-$version-py3-none-any.whl" ] || die "pip built no kpos-$version wheel"
  "$py" - "$src/pyproject.toml" "${HARDWARE_LIBS[@]}" > "$reqs" <<'EOF'
import re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
hardware = set(sys.argv[2:])
for req in project["dependencies"] + project["optional-dependencies"]["pi"]:
    name = re.match(r"[A-Za-z0-9._-]+", req).group(0)
    if re.sub(r"[-_.]+", "-", name).lower() not in hardware:
        print(req)
EOF
  quietly "$src.log" "$py" -m pip wheel -q -w "$wheels" -r "$reqs" || die "pip could not fetch the dependency wheels"
  drop_hardware_wheels "$wheels"
  [ "$platform" = host ] || swap_binary_wheels "$py" "$wheels" "$platform"
  say "wheelhouse: $(cd "$wheels" && find . -name '*.whl' -printf '%f\n' | sort | tr '\n' ' ')"
}

# Runs a command with its output in LOG, shown (last lines) only when it fails.
quietly() {
  local log="$1"
  shift
  "$@" > "$log" 2>&1 && return 0
  grep -v "^WARNING: Location" "$log" | tail -n 20 >&2
  return 1
}

drop_hardware_wheels() {
  local whl name lib
  for whl in "$1"/*.whl; do
    name="$(basename "$whl" | cut -d- -f1 | tr '_.A-Z' '--a-z')"
    for lib in "${HARDWARE_LIBS[@]}"; do
      [ "$name" != "$lib" ] || { say "dropping hardware library $(basename "$whl")"; rm -f "$whl"; }
    done
  done
}

# Replaces every wheel that is not pure Python by the same release built for the device.
swap_binary_wheels() {
  local py="$1" wheels="$2" platform="$3" whl name ver
  local args=(--only-binary=:all: --no-deps --python-version 3.11 --implementation cp --abi cp311 -d "$wheels")
  case "$platform" in
    aarch64) args+=(--platform manylinux_2_36_aarch64 --platform manylinux_2_34_aarch64
                    --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64
                    --platform linux_aarch64) ;;
    armv7l) args+=(--platform manylinux_2_36_armv7l --platform manylinux_2_31_armv7l
                   --platform linux_armv7l --extra-index-url https://www.piwheels.org/simple) ;;
  esac
  for whl in "$wheels"/*.whl; do
    case "$whl" in *-none-any.whl) continue ;; esac
    name="$(basename "$whl" | cut -d- -f1)"
    ver="$(basename "$whl" | cut -d- -f2)"
    rm -f "$whl"
    quietly "$wheels.log" "$py" -m pip download -q "${args[@]}" "$name==$ver" \
      || die "no $platform wheel of $name $ver on the index: try another --platform or version"
  done
}

write_release_json() {
  local py="$1" src="$2" bundle="$3" version="$4" platform="$5" commit
  commit="$(git -C "$REPO" rev-parse HEAD)"
  if [ -n "$(git -C "$REPO" status --porcelain)" ]; then
    say "warning: the work tree has uncommitted changes: release.json says $commit+dirty"
    commit="$commit+dirty"
  fi
  local schema
  schema="$(cd "$src" && "$py" -c 'from firmware.journal import SCHEMA_VERSION; print(SCHEMA_VERSION)')" \
    || die "could not read firmware.journal.SCHEMA_VERSION"
  "$py" - "$bundle/release.json" "$version" "$commit" "$platform" "$schema" <<'EOF'
import json, sys
from datetime import datetime, timezone
path, version, commit, platform, schema = sys.argv[1:]
release = {"version": version, "commit": commit,
           "built": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "python": ">=3.11", "platform": platform, "journal_schema": int(schema)}
with open(path, "w") as f:
    json.dump(release, f, indent=2)
    f.write("\n")
EOF
}

# MANIFEST: `sha256sum` lines for every file of the bundle, sorted by path.
write_manifest() {
  (cd "$1" && find . -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 sha256sum) > "$1.MANIFEST"
  mv "$1.MANIFEST" "$1/MANIFEST"
}

# DIR/kpos-<V>.mender (args: bundle, version, scratch dir, device types...): the bundle as the
# payload of the `kpos` update module (deploy/mender/kpos) with the hold / health / release
# state scripts. mender-artifact 3.9 cannot sign with ed25519:
# the artifact is signed only when KPOS_MENDER_SIGNING_KEY names an RSA or ECDSA P-256 key
# (the payload's own MANIFEST.sig is checked by the update module in any case).
write_mender() {
  local tar="$1" version="$2" scratch="$3" type args=() script
  shift 3
  command -v mender-artifact >/dev/null || die "--mender needs mender-artifact (apt install mender-artifact)"
  for type in "$@"; do args+=(-t "$type"); done
  for script in "$REPO"/deploy/mender/Artifact*; do args+=(-s "$script"); done
  [ -z "${KPOS_MENDER_SIGNING_KEY:-}" ] || args+=(-k "$KPOS_MENDER_SIGNING_KEY")
  local artifact="${tar%.tar}.mender" payload="$scratch/kpos.tar"
  cp "$tar" "$payload"  # Mender forbids "+" (local versions) in payload names
  mender-artifact write module-image -T kpos "${args[@]}" -n "kpos-$version" \
    --software-name kpos --software-version "$version" -f "$payload" -o "$artifact.part" >&2 \
    || die "mender-artifact could not write $artifact"
  mv -f "$artifact.part" "$artifact"
  say "mender artifact $artifact ($(stat -c %s "$artifact") bytes, device types: $*)"
}
