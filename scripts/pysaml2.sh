#!/usr/bin/env bash
# Install PyPI's pysaml2 (a standard SAML 2.0 library, pure Python; it checks signatures with
# Debian's xmlsec1) into a venv, for the test that plays a service provider against our IdP.
#
# Usage:
#   scripts/pysaml2.sh install    # create the venv, pip install pysaml2 (idempotent)
#   scripts/pysaml2.sh python     # print the path of the venv's python
#
# Environment:
#   PYSAML2_VENV   venv path (default: <workspace>/.venv/pysaml2)
#   PYSAML2_SPEC   pip requirement (default: pysaml2==7.5.2)
set -euo pipefail

_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYSAML2_VENV="${PYSAML2_VENV:-$_root/.venv/pysaml2}"
PYSAML2_SPEC="${PYSAML2_SPEC:-pysaml2==7.5.2}"

pysaml2_python() { echo "$PYSAML2_VENV/bin/python"; }

pysaml2_install() {
    if [ -x "$(pysaml2_python)" ] && "$(pysaml2_python)" -c 'import saml2' 2>/dev/null; then
        return 0
    fi
    local py=python3
    if command -v python3.11 >/dev/null 2>&1; then py=python3.11; fi
    echo "pysaml2: creating venv $PYSAML2_VENV with $py" >&2
    "$py" -m venv "$PYSAML2_VENV"
    "$PYSAML2_VENV/bin/pip" install --quiet --disable-pip-version-check "$PYSAML2_SPEC" >&2
    "$(pysaml2_python)" -c 'import saml2'
}

case "${1:-}" in
    install) pysaml2_install ;;
    python) pysaml2_python ;;
    *) echo "usage: $0 install|python" >&2; exit 2 ;;
esac
