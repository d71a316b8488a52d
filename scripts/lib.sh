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

# Where start.sh installs the service: a venv on Debian's own Python and copies of the
# sample config and rules/ (the sample's relative paths stay valid). Everything the
# service reads after dropping to SERVICE_USER must be readable by it, which a
# checkout under /root, or a Python under /root, is not.
PREFIX=/opt/smtpguard
SYSTEM_PYTHON=/usr/bin/python3

# The system user the service drops to after opening its socket (milter.user in
# conf/smtpguard.toml) and its state directory (directory.path and state.path).
SERVICE_USER=smtpguard
STATE_DIR=/var/lib/smtpguard

# service_user: create the user if missing; it owns STATE_DIR and what is in it.
service_user() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if ! getent passwd "$SERVICE_USER" >/dev/null; then
        $sudo useradd --system --home-dir "$STATE_DIR" --shell /usr/sbin/nologin "$SERVICE_USER"
    fi
    $sudo install -d -m 0750 -o "$SERVICE_USER" -g "$(id -gn "$SERVICE_USER")" "$STATE_DIR"
    # Files written there as root (directory import, blacklist add) must be its own:
    # the service runs as this user and check-config refuses files it cannot use.
    $sudo chown -R "$SERVICE_USER:$(id -gn "$SERVICE_USER")" "$STATE_DIR"
}

# install_tree SRC DEST: DEST becomes a copy of SRC (readable by all), except for what
# the operator changed there since the last install (review rev121 F2: re-running
# start.sh put the sample config back over the operator's): a file they edited stays,
# the shipped one lands beside it as NAME.dist; a file they added stays, and so does a
# link they made (to their config under /etc, say), DEST itself included. What was
# shipped is recorded in DEST/.shipped.sha256 (as dpkg does for conffiles); without
# that record (an older install) every file that differs counts as edited.
# same_mode FROM TO: TO gets FROM's permission bits and owner.
same_mode() {
    chmod --reference="$1" "$2"
    chown --reference="$1" "$2" 2>/dev/null || true
}

install_tree() {
    local src=$1 dest=$2 new rel
    # A DEST that is a link (to /etc/smtpguard, say) stays one: its target is updated
    # (review rev151 F3: the link was replaced by a directory of the samples).
    if [ -L "$dest" ]; then
        dest=$(readlink -f "$dest")
    fi
    new="$dest.new"
    rm -rf "$new"
    cp -r "$src" "$new"
    # What is shipped is readable by all; what the operator kept keeps its own mode
    # and owner (cp -p below): a config they made 0640 for its loop_marker_key stays
    # so (review rev140 F3: made 0644 again, and check-config then stopped start.sh).
    chmod -R a+rX "$new"
    if [ -d "$dest" ]; then
        while IFS= read -r -d '' rel; do
            if [ -L "$dest/$rel" ]; then
                # A link is the operator's (nothing shipped is one), kept as a link; what
                # is shipped under its name goes beside it (rev151 F3).
                if [ -e "$new/$rel" ] || [ -L "$new/$rel" ]; then
                    rm -rf "$new/$rel.dist"
                    mv "$new/$rel" "$new/$rel.dist"
                    echo "kept your link $dest/${rel#./}; the shipped version is beside it as ${rel#./}.dist" >&2
                fi
                mkdir -p "$(dirname "$new/$rel")"
                cp -P "$dest/$rel" "$new/$rel"
            elif [ ! -e "$new/$rel" ]; then
                mkdir -p "$(dirname "$new/$rel")"
                cp -p "$dest/$rel" "$new/$rel"
            elif ! cmp -s "$dest/$rel" "$new/$rel" &&
                ! grep -qxF "$(cd "$dest" && sha256sum "$rel")" "$dest/.shipped.sha256" 2>/dev/null; then
                mv "$new/$rel" "$new/$rel.dist"
                cp -p "$dest/$rel" "$new/$rel"
                echo "kept your $dest/${rel#./}; the shipped version is beside it as ${rel#./}.dist" >&2
            else
                # The new version of a file they did not edit, with the mode and owner
                # they may have given it (review rev142 F5).
                same_mode "$dest/$rel" "$new/$rel"
            fi
        done < <(cd "$dest" && find . \( -type f -o -type l \) ! -name '*.dist' ! -name .shipped.sha256 -print0)
        while IFS= read -r -d '' rel; do
            [ -d "$new/$rel" ] && same_mode "$dest/$rel" "$new/$rel"
        done < <(cd "$dest" && find . -type d -print0)
    fi
    (cd "$src" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$new/.shipped.sha256"
    chmod a+r "$new/.shipped.sha256"
    rm -rf "${dest:?}"
    mv "$new" "$dest"
}
