#!/usr/bin/env bash
# Install everything smtpguard needs and run it in the foreground with the shipped
# sample config (conf/smtpguard.toml): embedded directory and state, no outside service.
# The service opens its socket as root, then runs as the system user smtpguard
# (milter.user), created here if missing; it owns /var/lib/smtpguard. Without Postfix
# on the host the socket keeps the group it was created with (logged at start).
source "$(dirname "$0")/lib.sh"
if [ "$(id -u)" -ne 0 ]; then
    echo "start.sh: run it as root: it installs packages, creates the user" \
        "$SERVICE_USER and starts the service, which drops to that user" >&2
    exit 2
fi
apt_install "${RUNTIME_APT[@]}"
make_venv ""
service_user
CONFIG=${SMTPGUARD_CONFIG:-$ROOT/conf/smtpguard.toml}
if [ ! -f "$STATE_DIR/directory.sqlite" ]; then
    "$VENV/bin/smtpguard" -c "$CONFIG" directory import "$ROOT/conf/directory.example.toml"
    service_user  # the imported file becomes the service user's
fi
"$VENV/bin/smtpguard" -c "$CONFIG" check-config
exec "$VENV/bin/smtpguard" -c "$CONFIG" run
