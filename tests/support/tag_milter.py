"""Another site's milter, for tests where smtpguard joins milters already configured.

It adds one header, ``X-Tag-NAME: seen``, to every message, so a test can show it was
still called after ``smtpguard postfix-config`` was applied; given an authserv-id, also
the ``Authentication-Results`` field an OpenDKIM would add under that id.

    python tests/support/tag_milter.py NAME inet:PORT@127.0.0.1 [AUTHSERV-ID]
"""

from __future__ import annotations

import sys

import Milter


class TagMilter(Milter.Base):  # type: ignore[misc]  # pymilter ships no types
    tag = "unnamed"
    authserv_id = ""

    def eom(self) -> int:
        self.addheader(f"X-Tag-{self.tag}", "seen")
        if self.authserv_id:
            results = f"{self.authserv_id}; dkim=pass header.d=tag-{self.tag}.example"
            self.addheader("Authentication-Results", results)
        return int(Milter.ACCEPT)


def main() -> None:
    name, socket = sys.argv[1], sys.argv[2]
    TagMilter.tag = name
    TagMilter.authserv_id = sys.argv[3] if len(sys.argv) > 3 else ""
    Milter.factory = TagMilter
    Milter.set_flags(Milter.ADDHDRS)
    Milter.runmilter(f"tag-{name}", socket, 60)


if __name__ == "__main__":
    main()
