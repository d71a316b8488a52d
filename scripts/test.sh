#!/usr/bin/env bash
# Install the test dependencies and run the whole suite: ruff, mypy --strict, pytest.
# The Debian packages are the real components the suite starts on loopback (Postfix,
# Dovecot for SASL, unbound, clamd, Redis, rspamd, Debian's Lua miltertest); Sendmail
# conflicts with Postfix, so its packages are only downloaded and unpacked privately by
# the tests. Extra arguments go to pytest.
source "$(dirname "$0")/lib.sh"
apt_install "${RUNTIME_APT[@]}" miltertest postfix dovecot-core unbound clamav-daemon \
    clamdscan redis-server rspamd util-linux m4
# The packages' own services are not wanted: the tests start private instances.
for svc in postfix dovecot unbound clamav-daemon clamav-freshclam redis-server rspamd; do
    if [ -x "/etc/init.d/$svc" ]; then "/etc/init.d/$svc" stop >/dev/null 2>&1 || true; fi
done
make_venv "[test]"
cd "$ROOT"
# Sendmail's packages (and Cyrus SASL's) are only downloaded, into a cache the tests
# unpack privately; the list lives in tests/support/sendmail.py.
fetch_sendmail() {
    "$VENV/bin/python" -c 'import sys; sys.path.insert(0, "tests")
from support.sendmail import fetch_debs
fetch_debs()'
}
fetch_sendmail || { apt-get update -qq && fetch_sendmail; }
"$VENV/bin/ruff" check milter tests bench
"$VENV/bin/ruff" format --check milter tests bench
"$VENV/bin/mypy"
# pytest exits 5 when it collected no test: that is a failure here too (set -e).
exec "$VENV/bin/pytest" "$@"
