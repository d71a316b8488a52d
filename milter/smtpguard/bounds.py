"""How long smtpguard may take to answer the MTA, derived from the configured timeouts.

Both MTA adapters need it: ``sendmail-config`` sets ``T=R:`` from it, and
``postfix-config`` notes when it exceeds Postfix's milter timeouts.
"""

from __future__ import annotations

from dataclasses import dataclass

from smtpguard.checks import SENDER_SHARE
from smtpguard.config import Config
from smtpguard.dns import BUSY_SHARE


@dataclass(frozen=True, slots=True)
class AnswerBounds:
    """The longest smtpguard can take to answer one milter step, in seconds, when every
    service it waits for takes its whole timeout (or answers just before it)."""

    #: Connect, HELO, MAIL, RCPT, DATA (Postfix: ``milter_command_timeout``).
    command: float
    #: A header, a body chunk, end of message (Postfix: ``milter_content_timeout``);
    #: end of message is the long one.
    content: float

    @property
    def longest(self) -> float:
        return max(self.command, self.content)


def answer_bounds(config: Config) -> AnswerBounds:
    """How long smtpguard may take to answer a step, from the timeouts in ``config``.

    Every step may wait for DNS up to ``dns.stage_deadline`` (all its lookups and the
    connect-back share it), MAIL FROM two (the checks before those of the sender's
    domain one at most, those a whole one after them: smtpguard.checks.Event), and
    then a quarter of ``dns.timeout`` more for a lookup that waited for the resolver's
    slots (the time it waited is given back to its servers:
    smtpguard.dns.Resolver.collect), and for
    the state store (``state.timeout`` per call; MAIL
    makes two, the same-size counter and the blacklist, each of which stops asking a
    backend that failed for a while, so the first MAIL of an outage waits for both).
    MAIL and RCPT also ask the directory (``directory.timeout``). End of message adds
    the scanners, one after the other:

    * clamd (``virus.timeout``, as deadlines, not per socket operation): the body is
      streamed as it arrives, each chunk (the first one connecting) sent within the
      timeout. At end of message, connecting (a message without a body sent nothing
      yet) and sending what is left (at most about two 64 KiB chunks and the
      terminator) share one deadline, and the verdict has another: twice the timeout.
    * the ``command`` backend: one deadline for the whole run (``virus.timeout``).
    * rspamd (``antispam.engine_timeout``, as deadlines): connecting and sending the
      message share one, the answer has another: twice the timeout.
    """
    given_back = config.dns.timeout * BUSY_SHARE
    shared = config.dns.stage_deadline + given_back + config.state.timeout
    mail = (1 + SENDER_SHARE) * config.dns.stage_deadline + given_back
    command = mail + 2 * config.state.timeout + config.directory.timeout
    virus = {"clamd": 2.0, "command": 1.0}.get(config.virus.backend, 0.0)
    engine = 2.0 if config.antispam.engine == "rspamd" else 0.0
    content = shared + virus * config.virus.timeout + engine * config.antispam.engine_timeout
    return AnswerBounds(command=command, content=content)
