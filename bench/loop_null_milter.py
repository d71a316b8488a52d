"""A null milter without libmilter: one asyncio loop, one thread, every session on it.

bench/null_milter.py is the floor for a milter on pymilter: libmilter runs each session
on its own thread and pymilter takes the GIL for each callback. This answers the same
protocol steps the same way (every step CONTINUE, nothing negotiated away) from a lean
single-threaded protocol loop, so that the two floors can be compared through Postfix:
what a worker without a thread per session, and without GIL hand-overs, would cost
before any check runs. It is a measuring stick, not a milter to deploy (no timeouts, no
reply codes, no modifications).

    .venv/bin/python -m bench.loop_null_milter unix:/path/to/null.sock

Stops on SIGTERM or SIGINT. The unix socket is created world-writable so that Postfix's
smtpd (user postfix) can connect.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import struct

VERSION = 6
#: Every step sent and answered (no SMFIP_NO* or SMFIP_NR_* bits), as the null
#: pymilter milter negotiates.
PROTOCOL = 0
CONTINUE = struct.pack(">Ic", 1, b"c")
#: Commands that get no answer: macros, abort, quit.
SILENT = frozenset(b"DAQ")


async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readexactly(4)
            (length,) = struct.unpack(">I", head)
            body = await reader.readexactly(length)
            cmd = body[0]
            if cmd == ord("O"):
                # Whatever the MTA offers, ask for every step and no modification.
                writer.write(struct.pack(">IcIII", 13, b"O", VERSION, 0, PROTOCOL))
            elif cmd == ord("Q"):
                break
            elif cmd not in SILENT:
                writer.write(CONTINUE)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = await asyncio.start_unix_server(session, path)
    os.chmod(path, 0o666)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("socket", help="unix:/path")
    args = parser.parse_args()
    if not args.socket.startswith("unix:"):
        parser.error("only unix:/path sockets")
    asyncio.run(serve(args.socket.removeprefix("unix:")))


if __name__ == "__main__":
    main()
