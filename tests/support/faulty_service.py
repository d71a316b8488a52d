"""Run the real service with a directory that raises an unexpected exception.

Used to prove that any fault inside a check reaches the client as ``internal_error``.
The fault is passed in through ``build_runtime``; nothing is patched. test_adapter.py
passes the same :class:`ExplodingDirectory` to an in-process runtime.
"""

from __future__ import annotations

import logging
import sys

from smtpguard.adapter import App, serve
from smtpguard.app import build_runtime, load, new_gate
from smtpguard.directory import Login, Recipient


class ExplodingDirectory:
    def recipient(self, address: str) -> Recipient:
        raise RuntimeError("simulated bug in a directory backend")

    def login(self, login: str) -> Login | None:
        raise RuntimeError("simulated bug in a directory backend")

    def may_send_as(self, login: Login, address: str) -> bool:
        raise RuntimeError("simulated bug in a directory backend")

    def may_post(self, list_address: str, sender: str) -> bool:
        raise RuntimeError("simulated bug in a directory backend")


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    config = load(sys.argv[1])
    serve(App(build_runtime(config, directory=ExplodingDirectory()), new_gate(config)))


if __name__ == "__main__":
    main()
