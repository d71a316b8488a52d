"""Another site's milter, for tests where smtpguard joins milters already configured.

It adds one header, ``X-Tag-NAME: seen``, to every message, so a test can show it was
still called after ``smtpguard postfix-config`` was applied.

    python tests/support/tag_milter.py NAME inet:PORT@127.0.0.1
"""

from __future__ import annotations

import sys

import Milter


class TagMilter(Milter.Base):  # type: ignore[misc]  # pymilter ships no types
    tag = "unnamed"

    def eom(self) -> int:
        self.addheader(f"X-Tag-{self.tag}", "seen")
        return int(Milter.ACCEPT)


def main() -> None:
    name, socket = sys.argv[1], sys.argv[2]
    TagMilter.tag = name
    Milter.factory = TagMilter
    Milter.set_flags(Milter.ADDHDRS)
    Milter.runmilter(f"tag-{name}", socket, 60)


if __name__ == "__main__":
    main()
