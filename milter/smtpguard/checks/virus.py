"""``virus_found``: the virus scanner's verdict at end of message.

The message is streamed to the scanner as it arrives (clamd's INSTREAM, one chunk per
body chunk), so it is never held whole for scanning; the ``command`` backend spools it
(memory first, then an unlinked temporary file) and runs the program on it at end of
message. The virus name goes to the log only. A scanner that is down, times out or
answers nonsense gives a temporary error (``internal_error``'s row), or a pass when
the check's ``on_temp_error = "pass"``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import ClassVar

from smtpguard.checks import Event, Services, Stage, feed_fields, feed_sink
from smtpguard.scanners import ScanResult, ScanStatus, VirusStream
from smtpguard.session import Connection, Transaction
from smtpguard.verdict import Hit, TempError, Verdict

log = logging.getLogger(__name__)

_KEY = "virus.stream"


class VirusScan:
    name: ClassVar[str] = "virus"
    stage: ClassVar[Stage] = Stage.EOM
    reply_ids: ClassVar[tuple[str, ...]] = ("virus_found", "internal_error")

    def __init__(self, services: Services) -> None:
        self.config = services.config.virus
        self.open_stream = services.scanners.virus
        #: With no scanner configured there is nothing to stream or ask: the pipeline
        #: then leaves this check out instead of feeding it every header and chunk.
        self.inert = self.config.backend == "none"

    def _stream(self, txn: Transaction) -> VirusStream | None:
        if self.inert:
            return None
        stream: VirusStream | None = txn.scratch.get(_KEY)
        if stream is None:
            stream = txn.scratch[_KEY] = self.open_stream(self.config)
        return stream

    def observe(self, stage: Stage, conn: Connection, event: Event) -> None:
        txn = conn.txn
        stream = self._stream(txn) if txn is not None else None
        if stream is not None:
            feed_sink(stream, stage, event)

    def observe_fields(self, conn: Connection, fields: Sequence[tuple[str, str]]) -> None:
        txn = conn.txn
        stream = self._stream(txn) if txn is not None else None
        if stream is not None:
            feed_fields(stream, fields)

    def discard(self, txn: Transaction) -> None:
        stream: VirusStream | None = txn.scratch.pop(_KEY, None)
        if stream is not None:
            stream.close()

    def __call__(self, conn: Connection, event: Event) -> Verdict | None:
        txn = conn.txn
        stream: VirusStream | None = txn.scratch.get(_KEY) if txn is not None else None
        if stream is None:
            return None
        return self._verdict(conn, stream.finish())

    def _verdict(self, conn: Connection, result: ScanResult) -> Verdict | None:
        if result.status is ScanStatus.INFECTED:
            said = f" ({result.detail})" if result.detail else ""
            return Hit("virus_found", f"virus {result.virus or 'unnamed'}{said}")
        if result.status is ScanStatus.SIZE_LIMIT:
            if self.config.on_size_limit == "pass":
                # No verdict, so no decision line: without this one, a message whose
                # tail was never scanned would read in the log like any clean one.
                log.info(
                    "virus sid=%s partly scanned, passed (on_size_limit = pass): %s",
                    conn.session_id,
                    result.detail,
                )
                return None
            # The operator's choice for what is no fault: deferred also where
            # [checks.virus] on_temp_error = "pass" lets a scanner outage through.
            return TempError(
                "internal_error",
                f"too large to scan: {result.detail}",
                firm=True,
                fault=False,
                for_good=True,
            )
        if result.status is ScanStatus.ERROR:
            # suspect: the hook's status for "infected" without a name; may be a virus.
            # too_large: refused for its size, where on_size_limit = "tempfail" is the
            # operator's choice (review rev145 F2: on_temp_error = "pass" let it in).
            too_large = result.too_large and self.config.on_size_limit == "tempfail"
            return TempError(
                "internal_error",
                f"scanner failed: {result.detail}",
                firm=result.suspect or too_large,
                logged=result.unasked,
                # clamd's own StreamMaxLength below max_bytes: the same answer at every
                # retry, as SIZE_LIMIT above (review rev234 M1).
                for_good=too_large and not result.suspect,
            )
        return None
