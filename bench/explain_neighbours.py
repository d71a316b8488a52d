"""Backtest: would the nearest labelled reply beat explain's rules on new replies?

A method tried for issue 15's natural figure (tests/data/explain/README.md): rules
generalize from the texts they were written for, and a reply that is a reworded
neighbour of a labelled one may still fall to a generic rule, weak words or the codes.
The candidate: find the tuning line most like the reply (weighted Jaccard over the word
model's features, :func:`smtpguard.explain_words.features`, each weighted by its inverse
document frequency in that tuning data) and, when its similarity is at least T and its
label differs from the rules' answer, answer with the neighbour's label.

As bench/explain_backtest.py does, each past blind sample is explained by the code and
rules of the commit that added it (its single blind measurement), and the neighbours
are the lines that were tuning data then: heldout2..16 (:data:`FROZEN` there) and the
natural samples that were blind once and are tuning data now (natural2, natural3,
natural5; :data:`FROZEN_NATURAL`). Printed, per threshold T and for which old answers
the neighbour may overrule (:data:`OVERRULED`): lines turned right and turned wrong,
pooled over the samples and per sample, and the figures with the neighbour's answers.
Never reads a held-out sample (``heldout``, heldout17, natural1, natural4).

    .venv/bin/python -m bench.explain_neighbours [--work /tmp/explain-bt]
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.explain_backtest import (
    FROZEN,
    answer_kind,
    collect,
    collect_sample,
    sample,
    tuning_cases,
)
from smtpguard.explain import (
    clean_input,
    parse_reply,
)
from smtpguard.explain_words import WORDS_RULE, features
from tests.test_explain_corpus import DATA, Case, load_file

#: The natural samples measured blind once and read since: the commit that added each
#: (its file committed before its single measurement, with the rules of the time).
FROZEN_NATURAL: dict[str, str] = {
    "natural2": "67ac40d",
    "natural3": "db03211",
    "natural5": "0c0c3f9",
    "natural6": "a8092b4",
}
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
#: The old answers a neighbour may overrule, by who gave them.
OVERRULED: dict[str, frozenset[str]] = {
    "fallback": frozenset({"fallback"}),
    "weak": frozenset({"fallback", "keywords", "weak"}),
    "generic": frozenset({"fallback", "keywords", "weak", "generic"}),
    "all": frozenset({"fallback", "keywords", "weak", "generic", "specific"}),
}


@dataclass(frozen=True, slots=True)
class Old:
    case: Case
    category: str
    kind: str
    feats: frozenset[str]


def kind_of(rule: str, source: str, weak: bool) -> str:
    # The word model answers where the codes would: the same kind of last resort here.
    return "fallback" if rule == WORDS_RULE else answer_kind(rule, source, weak)


def feats_of(reply: str) -> frozenset[str]:
    parsed = parse_reply(clean_input(reply))
    return frozenset(features(parsed.code, parsed.xcode, parsed.plain))


def natural(name: str) -> list[Case]:
    return load_file(DATA / f"{name}.tsv", (name,))


def samples(work: Path) -> list[tuple[str, list[Old], list[Case]]]:
    """(name, old answers, tuning lines then) of every past blind sample."""
    out = []
    for k in sorted(FROZEN):
        cases = sample(k)
        old = collect(k, work)
        out.append((f"heldout{k}", olds(cases, old), tuning_cases(k)))
    before = tuning_cases(17)
    for name, commit in FROZEN_NATURAL.items():
        cases = natural(name)
        old = collect_sample(name, commit, work)
        out.append((name, olds(cases, old), list(before)))
        before = before + cases
    return out


def olds(cases: list[Case], old: list[tuple[str, str, str | None, str, bool]]) -> list[Old]:
    if len(old) != len(cases):
        raise SystemExit(f"{len(old)} results for {len(cases)} lines")
    return [
        Old(case, category, kind_of(rule, source, weak), feats_of(case.reply))
        for case, (rule, category, _fix, source, weak) in zip(cases, old, strict=True)
    ]


class Neighbours:
    """The labelled lines, searchable by weighted Jaccard similarity."""

    def __init__(self, cases: Sequence[Case]) -> None:
        self.items = [(feats_of(c.reply), c.category) for c in cases]
        df: Counter[str] = Counter()
        for feats, _ in self.items:
            df.update(feats)
        n = len(self.items)
        self.idf = {f: math.log((n + 1) / (count + 0.5)) for f, count in df.items()}
        self.unseen = math.log(n + 1)

    def weight(self, feature: str) -> float:
        return self.idf.get(feature, self.unseen)

    def nearest(self, feats: frozenset[str]) -> tuple[float, str]:
        """The best similarity and the label most of the lines at it carry."""
        best = -1.0
        labels: Counter[str] = Counter()
        for other, label in self.items:
            inter = sum(self.weight(f) for f in feats & other)
            if not inter:
                continue
            union = sum(self.weight(f) for f in feats | other)
            sim = inter / union
            if sim > best + 1e-9:
                best, labels = sim, Counter({label: 1})
            elif abs(sim - best) <= 1e-9:
                labels[label] += 1
        if not labels:
            return 0.0, ""
        return best, labels.most_common(1)[0][0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/explain-bt"))
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    data = samples(args.work)
    guesses: dict[str, list[tuple[float, str]]] = {}
    for name, lines, tuning in data:
        index = Neighbours(tuning)
        guesses[name] = [index.nearest(line.feats) for line in lines]
    total = sum(len(lines) for _, lines, _ in data)
    right = sum(o.category == o.case.category for _, lines, _ in data for o in lines)
    print(f"past blind samples: {len(data)}, {total} lines; old rules right {right}")
    print(
        "| overrules | T | turned right | turned wrong | net | all right | samples better/worse |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for scope, kinds in OVERRULED.items():
        for threshold in THRESHOLDS:
            plus = minus = better = worse = 0
            for name, lines, _ in data:
                p = m = 0
                for old, (sim, label) in zip(lines, guesses[name], strict=True):
                    if sim < threshold or old.kind not in kinds or label == old.category:
                        continue
                    p += label == old.case.category
                    m += old.category == old.case.category
                plus, minus = plus + p, minus + m
                better += p > m
                worse += p < m
            print(
                f"| {scope} | {threshold} | {plus} | {minus} | {plus - minus:+d} "
                f"| {right + plus - minus} | {better}/{worse} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
