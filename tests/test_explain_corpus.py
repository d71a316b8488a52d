"""``smtpguard explain`` measured on a labelled corpus of real reply lines.

``tests/data/explain/corpus.tsv`` holds real replies of 17 server families, each with
its provenance, the expected category and the expected fix, split once by a hash of
the line into a part the rules were tuned on and a held-out part (README.md there).
``heldout2.tsv`` is a second held-out sample, collected and labelled after the rules
were frozen and committed before it was first measured; all its lines are held out.
The test asserts category accuracy on the tuned part and on both held-out samples
together; run this file to print the table::

    .venv/bin/python tests/test_explain_corpus.py [--misses tune]
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from smtpguard.explain import FIXES, Knowledge, knowledge

CORPUS = Path(__file__).parent / "data" / "explain" / "corpus.tsv"
HELDOUT2 = CORPUS.with_name("heldout2.tsv")
SPLITS = ("tune", "heldout", "heldout2")
#: Both held-out samples together: the figure the issue's target is judged on.
HELDOUT_ALL = "heldout_all"
PARTS = (*SPLITS, HELDOUT_ALL)
FAMILIES = (
    "postfix",
    "sendmail",
    "exim",
    "qmail",
    "haraka",
    "opensmtpd",
    "james",
    "exchange",
    "gmail",
    "yahoo",
    "qq",
    "netease",
    "coremail",
    "sina",
    "aliyun",
    "zoho",
    "mimecast",
)
#: Accuracy floors: what was measured, rounded down, to catch regressions. The
#: issue's target is 0.90 category accuracy on held-out data. When the rules were
#: frozen the hash-split held-out part measured 132/147 = 0.898; the second sample,
#: measured once after its labels were committed, 82/110 = 0.745; both together
#: 214/257 = 0.833. The gap to 0.90 is an open item (docs/explain.md, "Accuracy").
MIN_CATEGORY = {"tune": 0.90, "heldout": 0.89, HELDOUT_ALL: 0.83}
#: The fix follows from the category (several categories share one), so it is at
#: least as accurate: 134/147 = 0.912 on the first held-out part, 91/110 = 0.827 on
#: the second, 225/257 = 0.875 in all.
MIN_FIX = {"tune": 0.90, "heldout": 0.90, HELDOUT_ALL: 0.87}


@dataclass(frozen=True, slots=True)
class Case:
    family: str
    split: str
    category: str
    fix: str
    reply: str
    provenance: str


def load_file(path: Path, splits: tuple[str, ...]) -> list[Case]:
    cases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 6:
            raise ValueError(f"{path}:{number}: expected 6 tab-separated fields")
        if fields[1] not in splits:
            raise ValueError(f"{path}:{number}: split must be one of {splits}")
        cases.append(Case(*fields))
    return cases


def load_corpus() -> list[Case]:
    """The hash-split corpus and the second held-out sample, which is held out whole."""
    return load_file(CORPUS, ("tune", "heldout")) + load_file(HELDOUT2, ("heldout2",))


@dataclass(frozen=True, slots=True)
class Score:
    total: int
    category: int
    fix: int


def score(know: Knowledge, cases: list[Case]) -> dict[tuple[str, str], Score]:
    """(family or "all", part) -> counts of lines and of right categories and fixes."""
    total: Counter[tuple[str, str]] = Counter()
    right: Counter[tuple[str, str]] = Counter()
    fixed: Counter[tuple[str, str]] = Counter()
    for case in cases:
        exp = know.explain(case.reply)
        parts = (case.split, HELDOUT_ALL) if case.split != "tune" else (case.split,)
        for key in ((family, part) for family in (case.family, "all") for part in parts):
            total[key] += 1
            right[key] += exp.category == case.category
            fixed[key] += exp.fix == case.fix
    return {key: Score(total[key], right[key], fixed[key]) for key in total}


def report(know: Knowledge, cases: list[Case]) -> str:
    """The per-family accuracy table (category, and fix) of every part, as Markdown."""
    scores = score(know, cases)
    names = ("tune", "held-out", "held-out 2", "held-out all")
    lines = [
        "| family | " + " | ".join(f"{n} n | {n} category | {n} fix" for n in names) + " |",
        "|---|" + "---:|" * 3 * len(names),
    ]
    for family in (*FAMILIES, "all"):
        cells = [family]
        for part in PARTS:
            s = scores.get((family, part), Score(0, 0, 0))
            if s.total:
                cells += [str(s.total), f"{s.category / s.total:.1%}", f"{s.fix / s.total:.1%}"]
            else:
                cells += ["0", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    return load_corpus()


def test_corpus_is_well_formed(cases: list[Case]) -> None:
    know = knowledge()
    assert len(cases) >= 400
    assert {c.family for c in cases} == set(FAMILIES)
    assert {c.split for c in cases} == set(SPLITS)
    assert len({c.reply for c in cases}) == len(cases), "duplicate reply lines"
    for case in cases:
        assert case.category in know.categories, case
        assert case.fix in FIXES, case
        assert case.provenance.strip(), case


@pytest.mark.parametrize("part", MIN_CATEGORY)
def test_category_accuracy(cases: list[Case], part: str) -> None:
    s = score(knowledge(), cases)[("all", part)]
    assert s.category / s.total >= MIN_CATEGORY[part], report(knowledge(), cases)


@pytest.mark.parametrize("part", MIN_CATEGORY)
def test_fix_accuracy(cases: list[Case], part: str) -> None:
    s = score(knowledge(), cases)[("all", part)]
    assert s.fix / s.total >= MIN_FIX[part], report(knowledge(), cases)


def main(argv: list[str]) -> int:
    cases = load_corpus()
    know = knowledge()
    print(report(know, cases))
    if len(argv) == 2 and argv[0] == "--misses":
        for case in cases:
            exp = know.explain(case.reply)
            if case.split == argv[1] and exp.category != case.category:
                print(f"{case.family}\t{case.category}\t{exp.category}\t{exp.rule}\t{case.reply}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
