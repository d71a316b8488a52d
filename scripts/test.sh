#!/usr/bin/env bash
# Install the test dependencies (Debian packages for the real components the suite
# starts, Python test tools) and run the whole suite: ruff, mypy --strict, pytest.
# Extra arguments go to pytest.
source "$(dirname "$0")/lib.sh"
apt_install "${RUNTIME_APT[@]}" miltertest postfix
make_venv "[test]"
cd "$ROOT"
"$VENV/bin/ruff" check milter tests bench
"$VENV/bin/ruff" format --check milter tests bench
"$VENV/bin/mypy"
# pytest exits 5 when it collected no test: that is a failure here too (set -e).
exec "$VENV/bin/pytest" "$@"
