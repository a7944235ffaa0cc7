#!/usr/bin/env bash
# Install resetwatch as a systemd service on Debian/Ubuntu (idempotent: run it again to upgrade).
#
#   sudo deploy/install.sh              install or upgrade, enable and (re)start the service
#   sudo deploy/install.sh --uninstall  stop, remove the rules, the service and every file
#   deploy/install.sh --dry-run         print each step, change nothing
#   deploy/install.sh --root DIR        install into a scratch root (no apt, no systemctl)
#
# Layout: a virtualenv in /opt/resetwatch, config /etc/resetwatch/resetwatch.toml (never
# overwritten once there), unit /etc/systemd/system/resetwatch.service, state in
# /var/lib/resetwatch (systemd's StateDirectory).
set -euo pipefail
# Our own umask, not the caller's: the venv, config and unit are world-readable (0755/0644)
# whatever root's umask is. The state and logs are systemd's (StateDirectory, LogsDirectory,
# UMask=0027 in the unit): the script never creates files there.
umask 022

SRC=$(cd "$(dirname "$0")/.." && pwd)
ROOT=""
DRY=0
ACTION=install
APT_PACKAGES=(iptables nftables conntrack python3-venv)

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --uninstall) ACTION=uninstall ;;
        --dry-run) DRY=1 ;;
        --root) ROOT=${2:?--root needs a directory}; shift ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

OPT="$ROOT/opt/resetwatch"
ETC="$ROOT/etc/resetwatch"
UNIT="$ROOT/etc/systemd/system/resetwatch.service"
STATE="$ROOT/var/lib/resetwatch"

step() {
    echo "+ $*"
    [ "$DRY" = 1 ] || "$@"
}

on_host() { [ -z "$ROOT" ]; }

if [ "$DRY" = 0 ] && on_host && [ "$(id -u)" != 0 ]; then
    echo "install.sh: needs root to install a system service (or use --root DIR / --dry-run)" >&2
    exit 2
fi

install_files() {
    if on_host; then
        local missing=()
        for pkg in "${APT_PACKAGES[@]}"; do
            dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" \
                || missing+=("$pkg")
        done
        if [ ${#missing[@]} -gt 0 ]; then
            step apt-get update -qq
            step env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
        fi
    fi
    [ -x "$OPT/bin/python" ] || step python3 -m venv "$OPT"
    step "$OPT/bin/pip" install -q --disable-pip-version-check --upgrade "$SRC"
    step install -d -m 0755 "$ETC" "$(dirname "$UNIT")"
    if [ -e "$ETC/resetwatch.toml" ]; then
        echo "  keeping $ETC/resetwatch.toml (yours); the current example is resetwatch.toml.example"
        step install -m 0644 "$SRC/deploy/resetwatch.toml" "$ETC/resetwatch.toml.example"
    else
        step install -m 0644 "$SRC/deploy/resetwatch.toml" "$ETC/resetwatch.toml"
    fi
    step install -m 0644 "$SRC/systemd/resetwatch.service" "$UNIT"
    step install -d -m 0755 "$OPT/docs"
    step cp -r "$SRC/docs/." "$OPT/docs/"
    if on_host; then
        step systemctl daemon-reload
        step systemctl enable resetwatch.service
        step systemctl restart resetwatch.service
    fi
}

legacy_tables_exist() {
    # Per network namespace; the files exist once the legacy modules are loaded.
    grep -q . /proc/net/ip_tables_names 2>/dev/null || grep -q . /proc/net/ip6_tables_names 2>/dev/null
}

would_create_legacy_tables() {
    # Listing a legacy table creates it: on an nft host, removing "our legacy rules" would
    # leave empty legacy tables behind (a second ruleset nobody sees with nft).
    case "$1" in
        iptables-legacy) ;;
        iptables) iptables -V 2>/dev/null | grep -q legacy || return 1 ;;
        *) return 1 ;;
    esac
    ! legacy_tables_exist
}

uninstall() {
    if on_host; then
        step systemctl disable --now resetwatch.service || true
    fi
    # The agent removes its rules when it stops; make sure, whatever the backend was (in
    # this network namespace: with --root too, so a test can run it inside a namespace).
    if [ -x "$OPT/bin/resetwatch" ]; then
        for backend in iptables iptables-legacy iptables-nft nft; do
            if would_create_legacy_tables "$backend"; then
                echo "  no legacy iptables tables here: nothing to remove with $backend"
                continue
            fi
            step "$OPT/bin/resetwatch" rules remove --backend "$backend" --config /dev/null || true
        done
    fi
    step rm -f "$UNIT"
    # DynamicUser keeps the state and logs under private/ (the plain paths are symlinks).
    step rm -rf "$OPT" "$ETC" "$STATE" "$ROOT/var/log/resetwatch" \
        "$ROOT/var/lib/private/resetwatch" "$ROOT/var/log/private/resetwatch"
    if on_host; then
        step systemctl daemon-reload
    fi
}

case "$ACTION" in
    install) install_files; echo "resetwatch installed${ROOT:+ under $ROOT}" ;;
    uninstall) uninstall; echo "resetwatch removed${ROOT:+ from $ROOT}" ;;
esac
