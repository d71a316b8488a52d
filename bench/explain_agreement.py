"""Two labellers on the natural samples: how far the labels themselves agree.

tests/data/explain/README.md ("A second labeller on natural1 and natural4") plans the
study: a second labeller who never saw the first labels, the rules or ``explain``'s
answers labels every line of a blind natural sample again (``naturalN-second.tsv``:
``id``, ``category``, ``alt``, ``note``; ``id`` is the line's number among the sample's
non-comment lines, from 1). The first labels stay the reference.

Printed per sample and pooled, counts only (a blind sample's misses stay unread): the
labellers' agreement on the category; ``explain``'s accuracy against the first labels
on every line, on the lines both label alike, and on the lines they label differently
(right by the first label, by the second, by either); the second labeller's own
accuracy against the first labels where it named a second category (``alt``) too.

    .venv/bin/python -m bench.explain_agreement [natural1 natural4 natural8 natural10 natural11]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from smtpguard.explain import knowledge

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "explain"


@dataclass(frozen=True, slots=True)
class Line:
    first: str
    second: str
    alt: str
    reply: str


def load(sample: str) -> list[Line]:
    """The sample's lines with both labellers' categories, in file order."""
    first = [
        row.split("\t")
        for row in (DATA / f"{sample}.tsv").read_text(encoding="utf-8").splitlines()
        if row and not row.startswith("#")
    ]
    second: dict[int, tuple[str, str]] = {}
    path = DATA / f"{sample}-second.tsv"
    for number, row in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not row or row.startswith("#"):
            continue
        fields = row.split("\t")
        if len(fields) < 3:
            raise ValueError(f"{path}:{number}: expected id, category, alt[, note]")
        second[int(fields[0])] = (fields[1], fields[2])
    if sorted(second) != list(range(1, len(first) + 1)):
        raise ValueError(f"{path}: ids must be 1..{len(first)}, one each")
    return [
        Line(fields[2], second[n][0], second[n][1], fields[4]) for n, fields in enumerate(first, 1)
    ]


@dataclass(slots=True)
class Tally:
    lines: int = 0
    agreed: int = 0
    right: int = 0
    right_agreed: int = 0
    disagreed: int = 0
    right_first: int = 0
    right_second: int = 0
    right_either: int = 0
    alts: int = 0
    alt_has_first: int = 0

    def add(self, other: Tally) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def tally(lines: list[Line]) -> Tally:
    know = knowledge()
    t = Tally()
    for line in lines:
        said = know.explain(line.reply).category
        t.lines += 1
        t.right += said == line.first
        if line.first == line.second:
            t.agreed += 1
            t.right_agreed += said == line.first
        else:
            t.disagreed += 1
            t.right_first += said == line.first
            t.right_second += said == line.second
            t.right_either += said in (line.first, line.second)
        if line.alt not in ("", "-"):
            t.alts += 1
            t.alt_has_first += line.first in (line.second, line.alt)
    return t


def pct(part: int, whole: int) -> str:
    return f"{part}/{whole} ({part / whole:.1%})" if whole else "0/0"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "samples",
        nargs="*",
        default=["natural1", "natural4", "natural8", "natural10", "natural11"],
    )
    args = parser.parse_args(argv)
    pooled = Tally()
    rows = []
    for sample in args.samples:
        t = tally(load(sample))
        pooled.add(t)
        rows.append((sample, t))
    if len(rows) > 1:
        rows.append(("pooled", pooled))
    print(
        "| sample | labellers agree | explain, every line | explain, lines agreed "
        "| disagreed: first label | second | either | second labeller's alt covers first |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, t in rows:
        print(
            f"| {name} | {pct(t.agreed, t.lines)} | {pct(t.right, t.lines)} "
            f"| {pct(t.right_agreed, t.agreed)} | {pct(t.right_first, t.disagreed)} "
            f"| {pct(t.right_second, t.disagreed)} | {pct(t.right_either, t.disagreed)} "
            f"| {pct(t.alt_has_first, t.alts)} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
