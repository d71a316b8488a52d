#!/usr/bin/env bash
# Install everything smtpguard needs and run it in the foreground with the shipped
# sample config (conf/smtpguard.toml): embedded directory and state, no outside service.
# The service opens its socket as root, then runs as the system user smtpguard
# (milter.user), created here if missing; it owns /var/lib/smtpguard. Without Postfix
# on the host the socket keeps the group it was created with (logged at start).
#
# --install-only: install or update, check the config, and stop there (for a host
# where the systemd unit runs the service: then `systemctl restart smtpguard`).
source "$(dirname "$0")/lib.sh"
INSTALL_ONLY=0
case "${1:-}" in
    "") ;;
    --install-only) INSTALL_ONLY=1 ;;
    *) echo "usage: start.sh [--install-only]" >&2; exit 2 ;;
esac
if [ "$(id -u)" -ne 0 ]; then
    echo "start.sh: run it as root: it installs packages, creates the user" \
        "$SERVICE_USER and starts the service, which drops to that user" >&2
    exit 2
fi
apt_install "${RUNTIME_APT[@]}"
# A real (not editable) install, so the service never reads the checkout.
install -d -m 0755 "$PREFIX"
[ -x "$PREFIX/venv/bin/python" ] || "$SYSTEM_PYTHON" -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install -q --disable-pip-version-check --upgrade "$ROOT"
# Beside it, what an operator reads and copies from: the sample config and rules (the
# sample's relative paths stay valid), the README and contrib/ (the systemd unit names
# both in Documentation=).
# Your edits to the config and rules stay (install_tree); contrib/ is documentation,
# replaced whole.
for dir in conf rules; do
    install_tree "$ROOT/$dir" "${PREFIX:?}/$dir"
done
rm -rf "${PREFIX:?}/contrib.new"
cp -r "$ROOT/contrib" "$PREFIX/contrib.new"
chmod -R a+rX "$PREFIX/contrib.new"
rm -rf "${PREFIX:?}/contrib"
mv "$PREFIX/contrib.new" "$PREFIX/contrib"
install -m 0644 "$ROOT/README.md" "$PREFIX/README.md"
# man smtpguard, man smtpguard.toml (generated: smtpguard.manpage).
install -D -m 0644 "$ROOT/contrib/man/smtpguard.8" /usr/local/share/man/man8/smtpguard.8
install -D -m 0644 "$ROOT/contrib/man/smtpguard.toml.5" \
    /usr/local/share/man/man5/smtpguard.toml.5
SMTPGUARD="$PREFIX/venv/bin/smtpguard"
# On PATH, for the README's commands (postfix-config and the others).
ln -sfn "$SMTPGUARD" /usr/local/bin/smtpguard
service_user
CONFIG=${SMTPGUARD_CONFIG:-$PREFIX/conf/smtpguard.toml}
# The example users on a first install only: the config says where the directory is,
# or that there is none (review rev140 F7: a fixed path merged them into a moved live
# directory at every update, and stopped start.sh with backend = "none").
"$SMTPGUARD" -c "$CONFIG" directory import --if-new "$PREFIX/conf/directory.example.toml"
service_user  # an imported file becomes the service user's
"$SMTPGUARD" -c "$CONFIG" check-config
if [ "$INSTALL_ONLY" -eq 1 ]; then
    echo "start.sh: installed in $PREFIX; a running service still runs the old code:" \
        "restart it (systemctl restart smtpguard); on a Postfix host run" \
        "'smtpguard postfix-config --check' first (README: after an upgrade)" >&2
    exit 0
fi
exec "$SMTPGUARD" -c "$CONFIG" run
