#!/usr/bin/env bash
# Install the test dependencies and run the whole suite: ruff, mypy --strict, pytest.
# The Debian packages are the real components the suite starts on loopback (Postfix,
# Dovecot for SASL, unbound, clamd, Redis, rspamd, Debian's Lua miltertest); Sendmail
# conflicts with Postfix, so its packages are only downloaded and unpacked privately by
# the tests. prometheus gives promtool (metrics and alert rules are checked with it),
# chromium and fonts-noto-cjk render the help site headless, Chinese included; openssl
# makes the certificates of the STARTTLS Sendmail. Extra
# arguments go to pytest.
source "$(dirname "$0")/lib.sh"
# The tests start private instances of these on loopback and random ports. A service
# that was already running (a mail host's own Postfix, say) keeps running; one that
# only runs because the install below started it is stopped again.
SERVICES=(postfix dovecot unbound clamav-daemon clamav-freshclam redis-server rspamd)
service_running() {
    [ -x "/etc/init.d/$1" ] && "/etc/init.d/$1" status >/dev/null 2>&1
}
was_running=()
for svc in "${SERVICES[@]}"; do
    if service_running "$svc"; then was_running+=("$svc"); fi
done
apt_install "${RUNTIME_APT[@]}" miltertest postfix dovecot-core unbound clamav-daemon \
    clamdscan redis-server rspamd util-linux m4 systemd prometheus chromium fonts-noto-cjk \
    openssl groff-base man-db
for svc in "${SERVICES[@]}"; do
    if [[ " ${was_running[*]} " == *" $svc "* ]]; then continue; fi
    if service_running "$svc"; then "/etc/init.d/$svc" stop >/dev/null 2>&1 || true; fi
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
# Tests and benchmarks are typed too. The tests import their helpers as "support" (from
# tests/), the benchmarks as "tests.support" (from the top), so two runs.
MYPYPATH=milter:stubs:tests "$VENV/bin/mypy" --explicit-package-bases tests
MYPYPATH=milter:stubs:. "$VENV/bin/mypy" --explicit-package-bases bench
# The suite starts `smtpguard` a few hundred times (services, CLI commands). Where the
# environment sets PYTHONDONTWRITEBYTECODE (this machine's does), each start compiled
# the package's source again, ~0.15 s of CPU; the files compiled once are read instead
# (and one edited later is compiled again by the import, as without this).
"$VENV/bin/python" -m compileall -q milter tests bench
# pytest exits 5 when it collected no test: that is a failure here too (set -e).
exec "$VENV/bin/pytest" "$@"
