# KPOS deploy: push, status, rollback and provision of one terminal over SSH.
# Sourced by deploy.sh (which provides say, die and $REPO); docs/deploy.md is the guide.
#
#   deploy_push USER@HOST [BUNDLE] [opts]   copy (resumable), verify the signature and the
#                                           MANIFEST on the device, install, selftest, switch
#   deploy_status USER@HOST [opts]          what the device's kpos-device status prints
#   deploy_rollback USER@HOST [opts]        back to the previous release (same health check)
#   deploy_provision USER@HOST [BUNDLE] [--dry-run] [opts]
#                                           signing key + boot/provision.sh, then a push
# opts: --port N, -i KEY (ssh identity), --root DIR (KPOS_ROOT on the device, for tests),
#       --idle-timeout S, --ready-timeout S, --health-timeout S, --no-echo (health check
#       without the echo test) for kpos-device; push: --stage-only (copy, verify, install,
#       selftest; switch with a later push of the same bundle).
# Env: KPOS_SSH_OPTS (extra ssh options, word-split, e.g. "-F cfg"), KPOS_RSYNC_OPTS
#      (extra rsync options, e.g. --bwlimit=500), KPOS_SIGNING_KEY (its .pub is provisioned).
# One SSH connection per command (ControlMaster); BatchMode: never asks for a password.
# Exit 0 done; 1 failed, with the device's reason on the last line; 2 usage.

_PY=/usr/bin/python3  # the device's system python runs kpos-device (docs/deploy.md)
_TARGET="" _BUNDLE="" _ROOT_OPT="" _DRY=0 _STAGE_ONLY=0 _CTL_DIR=""
_SSH=() _DEVICE_ARGS=()

_parse() {  # USER@HOST [BUNDLE] [opts]
    local port="" key=""
    _TARGET="" _BUNDLE="" _ROOT_OPT="" _DRY=0 _STAGE_ONLY=0 _DEVICE_ARGS=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --port) port=${2:?--port needs a number}; shift ;;
            -i) key=${2:?-i needs a key file}; shift ;;
            --root) _ROOT_OPT=${2:?--root needs a folder}; shift ;;
            --idle-timeout|--ready-timeout|--health-timeout)
                _DEVICE_ARGS+=("$1" "${2:?$1 needs seconds}"); shift ;;
            --no-echo) _DEVICE_ARGS+=("$1") ;;
            --stage-only) _STAGE_ONLY=1 ;;
            --dry-run) _DRY=1 ;;
            -*) die "unknown option $1 (see docs/deploy.md)" 2 ;;
            *) if [ -z "$_TARGET" ]; then _TARGET=$1
               elif [ -z "$_BUNDLE" ]; then _BUNDLE=$1
               else die "too many arguments: $1" 2; fi ;;
        esac
        shift
    done
    [[ "$_TARGET" == *@* ]] || die "give the terminal as USER@HOST" 2
    _CTL_DIR=$(mktemp -d)
    trap '_close' EXIT
    # shellcheck disable=SC2206  # KPOS_SSH_OPTS is a list of options on purpose
    _SSH=(ssh -o BatchMode=yes -o ConnectTimeout=15 -o ServerAliveInterval=10
          -o ControlMaster=auto -o "ControlPath=$_CTL_DIR/%C" -o ControlPersist=30
          ${KPOS_SSH_OPTS:-} ${port:+-p "$port"} ${key:+-i "$key"})
}

_close() {
    [ -n "$_CTL_DIR" ] || return 0
    "${_SSH[@]}" -O exit "$_TARGET" 2>/dev/null || true
    rm -rf "$_CTL_DIR"
    _CTL_DIR=""
}

_remote() {  # _remote 'shell text': run it on the device (KPOS_ROOT from --root if given)
    local env=""
    [ -z "$_ROOT_OPT" ] || env="export KPOS_ROOT=$(printf %q "$_ROOT_OPT"); "
    "${_SSH[@]}" "$_TARGET" "$env$1"
}

_device_root() {  # the KPOS_ROOT the device's commands see ("" on a real device)
    # shellcheck disable=SC2016  # expanded on the device
    _remote 'printf %s "${KPOS_ROOT:-}"' || die "cannot reach $_TARGET over ssh"
}

_on_device() {  # _on_device 'shell text': its lines shown as ours; dies with its last line
    local out="$_CTL_DIR/out" status
    set +e
    _remote "$1" 2>&1 | tee "$out" | sed 's/^/  device: /' >&2
    status=${PIPESTATUS[0]}
    set -e
    [ "$status" = 0 ] || die "failed on the device: $(tail -n 1 "$out" | sed 's/^error: //')"
}

_kpos_device() {  # _kpos_device UPDATER ARGS...
    _on_device "$_PY $(printf '%q ' "$@")"
}

_newest_bundle() {
    local newest
    # shellcheck disable=SC2012  # bundle names are kpos-<PEP 440 version>.tar
    newest=$(ls -t "$REPO"/dist/kpos-*.tar 2>/dev/null | head -n 1)
    [ -n "$newest" ] || die "no bundle in dist/: run ./deploy.sh build first"
    printf '%s' "$newest"
}

_copy() {  # _copy BUNDLE DEVICE_ROOT: resumable copy into incoming/, checked by its sum
    local bundle=$1 root=$2 name size sum remote
    name=${bundle##*/} size=$(stat -c %s "$bundle") sum=$(sha256sum "$bundle" | cut -d' ' -f1)
    remote=$(_remote "mkdir -p $(printf %q "$root/opt/kpos/incoming") && cd $(printf %q "$root/opt/kpos/incoming") \
        && if [ -f $(printf %q "$name") ]; then stat -c %s $(printf %q "$name"); \
           sha256sum $(printf %q "$name") | cut -d' ' -f1; fi")
    local have=${remote%%$'\n'*} have_sum=${remote#*$'\n'}
    if [ -n "$remote" ] && [ "$have_sum" = "$sum" ]; then
        say "copy: $name already on the device"
        return
    fi
    if [ -n "$remote" ] && [ "$have" -ge "$size" ]; then  # not a partial copy of this bundle
        _remote "rm -f $(printf %q "$root/opt/kpos/incoming/$name")"
    elif [ -n "$remote" ]; then
        say "copy: resuming $name at byte $have of $size"
    fi
    local stats
    # shellcheck disable=SC2086  # KPOS_RSYNC_OPTS is a list of options on purpose
    stats=$(rsync --partial --append-verify --stats ${KPOS_RSYNC_OPTS:-} \
        -e "$(printf '%q ' "${_SSH[@]}")" "$bundle" "$_TARGET:$root/opt/kpos/incoming/") \
        || die "copy to $_TARGET interrupted: run the same push again to resume"
    say "copy: $(grep -m1 '^Total bytes sent' <<<"$stats")"
    remote=$(_remote "sha256sum $(printf %q "$root/opt/kpos/incoming/$name") | cut -d' ' -f1")
    [ "$remote" = "$sum" ] || die "copy of $name differs from the bundle on the device"
}

_verify_install() {  # ROOT NAME: deploy/device/verify-bundle from this repo, piped to the
    # device's python3, checks the bundle in place (tar members, signature of MANIFEST,
    # every sum; extracts nothing), writes the checked updater to a scratch folder, which
    # then installs the bundle
    local q
    q=$(printf %q "$1")
    _on_device "set -e; cd $q/opt/kpos/incoming; scratch=\$(mktemp -d .verify-XXXXXX)
        trap 'rm -rf \"\$scratch\"' EXIT
        $_PY - $q/etc/kpos/release-signing.pub $(printf %q "$2") --updater-out \"\$scratch/kpos-device\"
        $_PY \"\$scratch/kpos-device\" install $(printf %q "$2")" <"$REPO/deploy/device/verify-bundle"
}

deploy_push() {
    _parse "$@"
    local bundle=${_BUNDLE:-$(_newest_bundle)}
    [ -f "$bundle" ] || die "no such bundle: $bundle"
    local name=${bundle##*/}
    [[ "$name" =~ ^kpos-([0-9A-Za-z][0-9A-Za-z.+_-]*)\.tar$ ]] || die "not a release bundle: $name" 2
    local version=${BASH_REMATCH[1]} root
    root=$(_device_root)
    say "pushing $version to $_TARGET"
    _copy "$bundle" "$root"
    say "verify and install"
    _verify_install "$root" "$name"
    local updater=$root/opt/kpos/releases/$version/device/kpos-device
    say "selftest"
    _kpos_device "$updater" selftest "$version"
    if [ "$_STAGE_ONLY" = 1 ]; then
        say "staged: $version is installed on $_TARGET; push it again to switch"
        return 0
    fi
    say "switch when idle, health check"
    _kpos_device "$updater" update "$version" "${_DEVICE_ARGS[@]}"
    say "done: $_TARGET runs $version"
}

_current_updater() {  # ROOT: the current release's kpos-device (dies when none)
    local updater=$1/opt/kpos/current/device/kpos-device
    _remote "test -f $(printf %q "$updater")" || die "no release installed on $_TARGET"
    printf '%s' "$updater"
}

deploy_status() {
    _parse "$@"
    local root updater
    root=$(_device_root)
    updater=$(_current_updater "$root")
    _remote "$_PY $(printf %q "$updater") status"
}

deploy_rollback() {
    _parse "$@"
    local root updater
    root=$(_device_root)
    updater=$(_current_updater "$root")
    say "rolling back $_TARGET to its previous release"
    _kpos_device "$updater" rollback "${_DEVICE_ARGS[@]}"
    say "done"
}

deploy_provision() {
    local args=("$@")
    _parse "$@"
    local bundle=${_BUNDLE:-$(_newest_bundle)} pub=${KPOS_SIGNING_KEY:-$HOME/.config/kpos/release-signing.pem}.pub
    [ -f "$bundle" ] || die "no such bundle: $bundle"
    [ -f "$pub" ] || die "no public key $pub: make the key with ./deploy.sh keygen"
    local name=${bundle##*/} version root stage
    version=${name#kpos-} version=${version%.tar}
    root=$(_device_root)
    say "provisioning $_TARGET (release $version)${root:+ under $root}"
    stage=$(_remote 'mktemp -d /tmp/kpos-provision.XXXXXX')
    # provision.sh reads boot/, config/ and docs/hardware.md next to itself; the release's
    # wheel comes out of the bundle.
    mkdir -p "$_CTL_DIR/stage/docs" "$_CTL_DIR/stage/wheel"
    cp -r "$REPO/boot" "$REPO/config" "$REPO/pyproject.toml" "$_CTL_DIR/stage/"
    cp "$REPO/docs/hardware.md" "$_CTL_DIR/stage/docs/"
    tar -xf "$bundle" -C "$_CTL_DIR/stage/wheel" --wildcards --strip-components=2 \
        "kpos-$version/wheels/kpos-*.whl" || die "no kpos wheel in $name"
    rsync -r -e "$(printf '%q ' "${_SSH[@]}")" "$_CTL_DIR/stage/" "$_TARGET:$stage/" \
        || die "copy of the provisioning files failed"
    local wheels=("$_CTL_DIR"/stage/wheel/kpos-*.whl) wheel
    wheel=${wheels[0]##*/}
    local flags=(--version "$version" --release "$stage/wheel/$wheel")
    [ -z "$root" ] || flags+=(--root "$root")
    [ "$_DRY" = 0 ] || flags+=(--dry-run)
    if [ "$_DRY" = 0 ]; then
        _remote "install -D -m 0644 /dev/stdin $(printf %q "$root/etc/kpos/release-signing.pub")" <"$pub" \
            || die "cannot put the signing key on the device"
        say "signing key installed ($(openssl pkey -pubin -in "$pub" -outform DER | sha256sum | cut -c1-16)...)"
    fi
    _on_device "trap 'rm -rf $(printf %q "$stage")' EXIT; bash $(printf %q "$stage/boot/provision.sh") $(printf '%q ' "${flags[@]}")"
    if [ "$_DRY" = 1 ]; then
        say "dry run: nothing changed; a real run then pushes $name"
        return 0
    fi
    _close
    local rest=() arg
    for arg in "${args[@]}"; do  # the same arguments, minus provision's own
        [ "$arg" = --dry-run ] || rest+=("$arg")
    done
    deploy_push "${rest[@]}"
}
