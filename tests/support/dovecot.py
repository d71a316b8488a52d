"""A private Dovecot that only answers SASL for Postfix (``smtpd_sasl_type = dovecot``).

Users come from a passwd-file written by the test; nothing else of Dovecot runs.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .daemons import stop_process

POLL_INTERVAL = 0.05

CONF = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols =
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service auth {{
  unix_listener {root}/auth {{
    mode = 0666
  }}
}}
service anvil {{
  chroot =
}}
"""


@dataclass
class Dovecot:
    root: Path
    process: subprocess.Popen[bytes]

    @property
    def socket(self) -> Path:
        return self.root / "auth"

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.root, ignore_errors=True)


def start_dovecot(users: dict[str, str]) -> Dovecot:
    root = Path(tempfile.mkdtemp(prefix="smtpguard-dovecot-"))
    root.chmod(0o755)
    for sub in ("run", "state"):
        (root / sub).mkdir()
    (root / "passwd").write_text("".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in users.items()))
    conf = root / "dovecot.conf"
    conf.write_text(CONF.format(root=root))
    process = subprocess.Popen(
        ["dovecot", "-F", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    end = time.monotonic() + 20
    while True:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(root / "auth"))
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > end:
                process.kill()
                err = process.stderr.read().decode() if process.stderr else ""
                raise RuntimeError(f"dovecot did not start: {err}") from None
            time.sleep(POLL_INTERVAL)
    return Dovecot(root, process)
