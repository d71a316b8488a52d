#!/usr/bin/env bash
# Install everything smtpguard needs and run it in the foreground with the shipped
# sample config (conf/smtpguard.toml): embedded directory and state, no outside service.
source "$(dirname "$0")/lib.sh"
apt_install "${RUNTIME_APT[@]}"
make_venv ""
CONFIG=${SMTPGUARD_CONFIG:-$ROOT/conf/smtpguard.toml}
if [ ! -f /var/lib/smtpguard/directory.sqlite ]; then
    "$VENV/bin/smtpguard" -c "$CONFIG" directory import "$ROOT/conf/directory.example.toml"
fi
"$VENV/bin/smtpguard" -c "$CONFIG" check-config
exec "$VENV/bin/smtpguard" -c "$CONFIG" run
