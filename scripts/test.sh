#!/usr/bin/env bash
# Install the test dependencies and run the whole suite: ruff, mypy --strict, pytest.
# The Debian packages are the real components the suite starts on loopback (Postfix,
# Dovecot for SASL, unbound, clamd, Redis, rspamd, Debian's Lua miltertest); Sendmail
# conflicts with Postfix, so its packages are only downloaded and unpacked privately by
# the tests. Extra arguments go to pytest.
source "$(dirname "$0")/lib.sh"
apt_install "${RUNTIME_APT[@]}" miltertest postfix dovecot-core unbound clamav-daemon \
    clamdscan redis-server rspamd util-linux m4
# Sendmail's packages, fetched here so that every network access happens in this script.
SENDMAIL_DEBS=/var/cache/smtpguard-tests/debs
if ! ls "$SENDMAIL_DEBS"/sendmail-bin_*.deb >/dev/null 2>&1; then
    mkdir -p "$SENDMAIL_DEBS"
    (cd "$SENDMAIL_DEBS" && apt-get download -o APT::Sandbox::User=root \
        sendmail-bin sendmail-base sendmail-cf m4 liblockfile1 libwrap0 >/dev/null) || {
        apt-get update -qq
        (cd "$SENDMAIL_DEBS" && apt-get download -o APT::Sandbox::User=root \
            sendmail-bin sendmail-base sendmail-cf m4 liblockfile1 libwrap0 >/dev/null)
    }
fi
# The packages' own services are not wanted: the tests start private instances.
for svc in postfix dovecot unbound clamav-daemon clamav-freshclam redis-server rspamd; do
    if [ -x "/etc/init.d/$svc" ]; then "/etc/init.d/$svc" stop >/dev/null 2>&1 || true; fi
done
make_venv "[test]"
cd "$ROOT"
"$VENV/bin/ruff" check milter tests bench
"$VENV/bin/ruff" format --check milter tests bench
"$VENV/bin/mypy"
# pytest exits 5 when it collected no test: that is a failure here too (set -e).
exec "$VENV/bin/pytest" "$@"
