#!/usr/bin/env bash
# Install, start and stop the reference SCIM server (PyPI: scim2-server) used
# by the integration tests of the scim and connectors crates.
#
# Usage:
#   scripts/scim2-server.sh install              # create the venv, pip install scim2-server
#   scripts/scim2-server.sh bin                  # print the path of the scim2-server binary
#   scripts/scim2-server.sh start [TOKEN]        # start on a free port, print the base URL
#   scripts/scim2-server.sh stop                 # stop the server started by `start`
#   scripts/scim2-server.sh env [TOKEN]          # start, print `export` lines for the tests
#
# Or source it and call scim2_install / scim2_start [TOKEN] / scim2_stop.
#
# Environment:
#   SCIM2_VENV             venv path (default: <workspace>/.venv/scim2)
#   SCIM2_SERVER_SPEC      pip requirement (default: scim2-server==0.8.3)
#   SCIM2_PYTHON           python used to create the venv (default: python3.11, else python3)
#   SCIM2_STATE_DIR        where the pid and log files go (default: $SCIM2_VENV/run)
#   SCIM2_PORT             port for `start` (default: a free one)
#
# The tests start their own server from "$SCIM2_VENV/bin/scim2-server" (and run
# `install` if it is missing); `env` is for pointing them at an already running
# one with PROVISIONER_TEST_SCIM_URL / PROVISIONER_TEST_SCIM_TOKEN.
set -euo pipefail

_scim2_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCIM2_VENV="${SCIM2_VENV:-$_scim2_root/.venv/scim2}"
SCIM2_SERVER_SPEC="${SCIM2_SERVER_SPEC:-scim2-server==0.8.3}"
SCIM2_STATE_DIR="${SCIM2_STATE_DIR:-$SCIM2_VENV/run}"

scim2_bin() { echo "$SCIM2_VENV/bin/scim2-server"; }

scim2_install() {
    if [ -x "$(scim2_bin)" ]; then
        return 0
    fi
    local py="${SCIM2_PYTHON:-}"
    if [ -z "$py" ]; then
        if command -v python3.11 >/dev/null 2>&1; then py=python3.11; else py=python3; fi
    fi
    echo "scim2-server: creating venv $SCIM2_VENV with $py" >&2
    "$py" -m venv "$SCIM2_VENV"
    "$SCIM2_VENV/bin/pip" install --quiet --disable-pip-version-check "$SCIM2_SERVER_SPEC" >&2
    "$(scim2_bin)" --help >/dev/null
}

_scim2_free_port() {
    "$SCIM2_VENV/bin/python" - <<'PY'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

# scim2_start [TOKEN]: start in the background, wait until it answers, print the base URL.
scim2_start() {
    local token="${1:-}"
    scim2_install
    mkdir -p "$SCIM2_STATE_DIR"
    if [ -f "$SCIM2_STATE_DIR/pid" ] && kill -0 "$(cat "$SCIM2_STATE_DIR/pid")" 2>/dev/null; then
        echo "scim2-server: already running (pid $(cat "$SCIM2_STATE_DIR/pid")); stop it first" >&2
        return 1
    fi
    local port="${SCIM2_PORT:-$(_scim2_free_port)}"
    local args=(--hostname 127.0.0.1 --port "$port")
    if [ -n "$token" ]; then args+=(--bearer-token "$token"); fi
    "$(scim2_bin)" "${args[@]}" >"$SCIM2_STATE_DIR/server.log" 2>&1 &
    local pid=$!
    echo "$pid" >"$SCIM2_STATE_DIR/pid"
    echo "$port" >"$SCIM2_STATE_DIR/port"
    local url="http://127.0.0.1:$port/v2"
    local i
    for i in $(seq 1 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "scim2-server: exited early; log:" >&2
            cat "$SCIM2_STATE_DIR/server.log" >&2
            rm -f "$SCIM2_STATE_DIR/pid"
            return 1
        fi
        # Any HTTP answer (200, or 401 with a token) means it is up.
        if "$SCIM2_VENV/bin/python" - "$url/ServiceProviderConfig" <<'PY' 2>/dev/null; then
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=1)
except urllib.error.HTTPError:
    pass
PY
            echo "$url"
            return 0
        fi
        sleep 0.2
    done
    echo "scim2-server: did not answer on $url within 20s" >&2
    scim2_stop
    return 1
}

scim2_stop() {
    local pidfile="$SCIM2_STATE_DIR/pid"
    if [ -f "$pidfile" ]; then
        local pid
        pid="$(cat "$pidfile")"
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            local i
            for i in $(seq 1 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    case "${1:-}" in
        install) scim2_install; scim2_bin ;;
        bin) scim2_bin ;;
        start) scim2_start "${2:-}" ;;
        stop) scim2_stop ;;
        env)
            url="$(scim2_start "${2:-}")"
            echo "export PROVISIONER_TEST_SCIM_URL=$url"
            if [ -n "${2:-}" ]; then echo "export PROVISIONER_TEST_SCIM_TOKEN=${2}"; fi
            ;;
        *)
            sed -n '2,25p' "$0" >&2
            exit 2
            ;;
    esac
fi
