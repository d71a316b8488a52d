# Shared helpers for the set-up scripts (sourced, not run).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
export DEBIAN_FRONTEND=noninteractive

# apt_install PKG...: install the Debian packages that are missing (one apt-get update).
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    # Postfix asks a debconf question on install; "No configuration" leaves /etc alone.
    echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# make_venv EXTRA: a virtualenv in .venv with smtpguard installed editable.
make_venv() {
    local extra=${1:-}
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT$extra"
}

RUNTIME_APT=(python3 python3-venv python3-dev gcc libmilter-dev)
