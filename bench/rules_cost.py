"""CPU per message of the built-in content rules (rules/antispam.toml) alone.

The rules are the one hot path that runs operator-written patterns on every header and
body line; this isolates them from the rest of a session (bench/session_cost.py shows
them as "observe antispam" and "eom antispam"). Each message is fed as the milter feeds
it (header by header, body chunks of at most 65535 octets) and the best of ``--rounds``
rounds is reported, in microseconds of thread CPU per message.

    .venv/bin/python -m bench.rules_cost [-n 2000] [--rounds 5]

The script uses only ``RuleSet.load`` and ``RuleSet.scanner``, so the same file runs
against an older checkout (``PYTHONPATH=OLD/milter``) for a before/after comparison.
"""

from __future__ import annotations

import argparse
import time

from smtpguard.scanners.rules import RuleSet

DATE = "Thu, 28 Nov 2024 17:00:00 +0000 (UTC)"
HEADERS = [
    (
        "Received",
        "from mail.sender.bench.test (mail.sender.bench.test [198.51.100.7])\n\tby"
        f" mx.example.com (Postfix) with ESMTP id 4QBENCH0001\n\tfor <a@example.com>; {DATE}",
    ),
    ("From", "<someone@sender.bench.test>"),
    ("To", "<a@example.com>"),
    ("Date", DATE),
    ("Message-Id", "<20241128170000.4QBENCH0001@sender.bench.test>"),
    ("Subject", "Minutes of Tuesday's meeting"),
]
LA = b"La La La La La La La La La La La La La La La La La La La La La La La La\r\n"
PROSE = (
    b"Hi Bob, attached are the minutes; the budget review moves to Friday and the\r\n"
    b"new office opens in March. Please send your comments before the next call.\r\n"
)
SPAM = (
    b"Congratulations! You are the winner of the lottery: 2 million US dollars.\r\n"
    b"Act now and send the fee in bitcoin to the wallet below, next of kin desk.\r\n"
)
MESSAGES = {
    # bench/session_cost.py's message: 2 KB of one repeated line
    "session (2 KB)": (HEADERS, (LA * 30)[:2048]),
    "prose (20 KB)": (HEADERS, PROSE * 130),
    "prose (200 KB)": (HEADERS, PROSE * 1300),
    "spam (1 KB)": ([*HEADERS[:-1], ("Subject", "YOU HAVE WON $1,000,000!!!")], SPAM * 7),
    "headers only": (HEADERS, b""),
}


def scan(rules: RuleSet, headers: list[tuple[str, str]], body: bytes) -> None:
    scan = rules.scanner()
    for name, value in headers:
        scan.feed_header(name, value)
    scan.end_of_headers()
    for offset in range(0, len(body), 65535):
        scan.feed(body[offset : offset + 65535])
    scan.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="messages per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rules = RuleSet.load()
    print(f"{len(rules.rules)} rules from {rules.source}; best of {args.rounds} rounds")
    for label, (headers, body) in MESSAGES.items():
        n = max(10, args.n * 2048 // max(len(body), 2048))
        best = float("inf")
        for _ in range(args.rounds):
            start = time.thread_time()
            for _ in range(n):
                scan(rules, headers, body)
            best = min(best, (time.thread_time() - start) / n)
        print(f"  {label:16} {best * 1e6:10.1f} us per message")


if __name__ == "__main__":
    main()
