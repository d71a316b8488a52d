"""A small authoritative UDP DNS server that delays every answer (for benchmarks).

It answers from rules, not zone files, so any number of client IPs works:

* ``<reversed IPv4>.<zone>`` in a DNSBL zone (``--zone``, repeatable): NXDOMAIN, except
  clients whose last octet is 2 (listed: A 127.0.0.2 and a TXT reason);
* PTR of any IPv4 address ``a.b.c.d``: ``mx-c-d.bench.test``, and A of that name:
  the address again (forward-confirmed);
* ``sender.bench.test``: MX 10 mx.sender.bench.test, TXT ``v=spf1 ip4:10.0.0.0/8 -all``;
* anything else: NXDOMAIN; negative answers carry an SOA (MINIMUM 60, RFC 2308).

Every answer leaves ``--delay`` seconds after its query arrived, without holding up
the others (``loop.call_later``), like a far-away server.

Run alone: ``python -m bench.slow_dns --port 5399 --delay 0.2 --zone bl1.bench.test``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import ipaddress
import signal
import threading
from collections.abc import Sequence
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

BASE = dns.name.from_text("bench.test.")
SOA = "ns.bench.test. hostmaster.bench.test. 1 3600 600 86400 60"
SENDER = dns.name.from_text("sender.bench.test.")


class SlowDns(asyncio.DatagramProtocol):
    def __init__(self, delay: float, zones: Sequence[str]) -> None:
        self.delay = delay
        self.zones = [dns.name.from_text(z if z.endswith(".") else z + ".") for z in zones]
        self.transport: asyncio.DatagramTransport | None = None
        self.queries = 0
        self._soa_cache: dict[dns.name.Name, bytes] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's UDP transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queries += 1
        wire = self.negative(data)
        if wire is None:
            try:
                wire = self.answer(dns.message.from_wire(data)).to_wire()
            except dns.exception.DNSException:
                return
        loop = asyncio.get_running_loop()
        loop.call_later(self.delay, self._send, wire, addr)

    def negative(self, data: bytes) -> bytes | None:
        """NXDOMAIN / no data built from the query's own bytes: most answers of a
        DNSBL benchmark are negative, and the server must not be the bottleneck.
        None when the answer has records (then dnspython builds it)."""
        if len(data) < 17 or data[4:6] != b"\x00\x01":
            return None
        labels, offset = [], 12
        while offset < len(data) and data[offset]:
            length = data[offset]
            labels.append(data[offset + 1 : offset + 1 + length])
            offset += 1 + length
        end = offset + 5  # the root label, QTYPE, QCLASS
        if end > len(data):
            return None
        name = dns.name.Name([*labels, b""])
        rdtype = int.from_bytes(data[offset + 1 : offset + 3], "big")
        records = self.records(name, rdtype)
        if records:
            return None
        rcode = 3 if records is None else 0  # NXDOMAIN or NOERROR without data
        flags = 0x8400 | (int.from_bytes(data[2:4], "big") & 0x0100) | 0x0080 | rcode
        header = data[:2] + flags.to_bytes(2, "big") + b"\x00\x01\x00\x00\x00\x01\x00\x00"
        return header + data[12:end] + self._soa_wire(self.soa_owner(name))

    def _soa_wire(self, owner: dns.name.Name) -> bytes:
        wire = self._soa_cache.get(owner)
        if wire is None:
            out = io.BytesIO()
            dns.rrset.from_text(owner, 60, "IN", "SOA", SOA).to_wire(out)
            wire = out.getvalue()
            self._soa_cache[owner] = wire
        return wire

    def _send(self, wire: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(wire, addr)

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name, rdtype = question.name, question.rdtype
        records = self.records(name, rdtype)
        if records is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        if records:
            rrset = dns.rrset.from_text_list(
                name, 300, dns.rdataclass.IN, dns.rdatatype.to_text(rdtype), records
            )
            response.answer.append(rrset)
        else:
            soa = dns.rrset.from_text(self.soa_owner(name), 60, "IN", "SOA", SOA)
            response.authority.append(soa)
        return response

    def soa_owner(self, name: dns.name.Name) -> dns.name.Name:
        for zone in self.zones:
            if name.is_subdomain(zone):
                return zone
        return BASE

    def records(self, name: dns.name.Name, rdtype: int) -> list[str] | None:
        """Records of the type, [] for no data, None for NXDOMAIN."""
        for zone in self.zones:
            if name.is_subdomain(zone) and name != zone:
                labels = name.relativize(zone).labels
                if len(labels) != 4 or labels[0] != b"2":
                    return None
                if rdtype == dns.rdatatype.A:
                    return ["127.0.0.2"]
                if rdtype == dns.rdatatype.TXT:
                    return ['"listed by the benchmark"']
                return []
        text = name.to_text(omit_final_dot=True)
        if text.endswith(".in-addr.arpa"):
            octets = text.split(".")[:4]
            if rdtype == dns.rdatatype.PTR and len(octets) == 4:
                return [f"mx-{octets[1]}-{octets[0]}.bench.test."]
            return []
        if text.startswith("mx-") and name.is_subdomain(BASE):
            return self._forward(text, rdtype)
        if name == SENDER:
            if rdtype == dns.rdatatype.MX:
                return ["10 mx.sender.bench.test."]
            if rdtype == dns.rdatatype.TXT:
                return ['"v=spf1 ip4:10.0.0.0/8 -all"']
            return []
        return None

    def _forward(self, text: str, rdtype: int) -> list[str] | None:
        # mx-C-D.bench.test -> 10.1.C.D (the benchmark's clients live in 10.1.0.0/16)
        parts = text.split(".", maxsplit=1)[0].split("-")
        try:
            ip = ipaddress.IPv4Address(f"10.1.{parts[1]}.{parts[2]}")
        except (IndexError, ValueError):
            return None
        return [str(ip)] if rdtype == dns.rdatatype.A else []


class ServerThread:
    """The server on its own event loop in a daemon thread (for the benchmark)."""

    def __init__(self, delay: float, zones: Sequence[str], port: int = 0) -> None:
        self.protocol = SlowDns(delay, zones)
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.port = 0

        async def start() -> None:
            transport, _ = await self.loop.create_datagram_endpoint(
                lambda: self.protocol, local_addr=("127.0.0.1", port)
            )
            self.port = transport.get_extra_info("sockname")[1]

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="slow-dns", daemon=True)
        self.thread.start()
        ready.wait()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=5399)
    p.add_argument("--delay", type=float, default=0.2)
    p.add_argument("--zone", action="append", default=[])
    args = p.parse_args()
    server = ServerThread(args.delay, args.zone, args.port)
    print(
        f"slow DNS on 127.0.0.1:{server.port}, delay {args.delay}s, zones {args.zone}", flush=True
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    server.stop()
    print(f"queries: {server.protocol.queries}", flush=True)


if __name__ == "__main__":
    main()
