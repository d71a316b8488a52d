"""Backtest of explain's word model (smtpguard/explain_words.py) on the past blind samples.

Each past blind sample heldoutK.tsv (K = 2..9) was measured once with the rules of the
commit that added it (:data:`FROZEN`), before any of its misses were read. This replays
that: it runs THAT commit's ``explain`` code and rules (``git archive`` into a scratch
directory, one subprocess per sample, ``PYTHONPATH`` on the old tree) over heldoutK's
lines and records the rule id and category of each. A word model is trained on what was
tuning data then (corpus.tsv's ``tune`` split and heldout2..heldout(K-1), current
labels) and asked where the old rules fell back to ``rfc3463-fallback``.

Printed: per policy (smoothing ``alpha``, the class restriction, the scope, threshold)
the pooled count of right categories on the fallback lines; then, for the chosen policy
(the options), per K and pooled: fallback lines, fallback right, combination right
(and fixes), and the model alone on every line of heldoutK against the old rules.

The model's features come from today's parser (``parse_reply``/``plain_text``), not the
old commit's: the parser changed a little since heldout2, mostly for pasted prefixes.

Never reads the held-out ``heldout`` split of corpus.tsv nor heldout10.tsv.

    .venv/bin/python -m bench.explain_backtest [--alpha 0.1] [--threshold 0.6]
        [--no-restrict] [--scope all|code] [--work /tmp/explain-backtest]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from smtpguard.explain import (
    FALLBACK_RULE,
    Knowledge,
    clean_input,
    knowledge,
    parse_reply,
    train_words,
)
from smtpguard.explain_words import ALPHA, THRESHOLD, WordModel, features
from tests.test_explain_corpus import CORPUS, DATA, Case, load_file

ROOT = Path(__file__).resolve().parents[1]
#: heldoutK -> the commit that added it (``git log --diff-filter=A``): its rules are
#: the ones the sample was measured with, blind.
FROZEN: dict[int, str] = {
    2: "94bed22",
    3: "e1bce99",
    4: "b8953b8",
    5: "60ff0e5",
    6: "689b448",
    7: "5b1dabf",
    8: "ac2b077",
    9: "682bfb5",
}
ALPHAS = (0.1, 0.5, 1.0)
THRESHOLDS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
#: ``all``: every line the fallback answered; ``code``: only those whose enhanced code
#: has no specific RFC 3463 detail (the fallback then guesses from a code or class).
SCOPES = ("all", "code")

#: Run inside the old tree: its explain over a tsv's replies, as JSON.
_COLLECT = """
import json, sys
from pathlib import Path
import smtpguard.explain as e
know = e.knowledge(Path(sys.argv[1]) / "rules")
out = {"module": e.__file__, "lines": []}
for line in Path(sys.argv[2]).read_text(encoding="utf-8").splitlines():
    if not line or line.startswith("#"):
        continue
    exp = know.explain(line.split("\\t")[4])
    out["lines"].append([exp.rule, exp.category, getattr(exp, "fix", None)])
print(json.dumps(out))
"""


@dataclass(frozen=True, slots=True)
class Line:
    case: Case
    rule: str
    category: str
    fix: str
    feats: tuple[str, ...]
    klass: str
    #: The enhanced code names a specific RFC 3463 detail (today's fallback table).
    specific: bool


def tuning_cases(k: int) -> list[Case]:
    """What was tuning data when heldoutK was blind: ``tune`` and heldout2..K-1."""
    cases = [c for c in load_file(CORPUS, ("tune", "heldout")) if c.split == "tune"]
    for j in range(2, k):
        cases += load_file(DATA / f"heldout{j}.tsv", (f"heldout{j}",))
    return cases


def sample(k: int) -> list[Case]:
    return load_file(DATA / f"heldout{k}.tsv", (f"heldout{k}",))


def line_features(line: str) -> tuple[tuple[str, ...], str]:
    reply = parse_reply(clean_input(line))
    return features(reply.code, reply.xcode, reply.plain), reply.klass


def collect(k: int, work: Path) -> list[tuple[str, str, str]]:
    """(rule, category, fix) of each heldoutK line under the commit that added it."""
    cache = work / f"heldout{k}.json"
    if not cache.exists():
        tree = work / f"tree{k}"
        if not tree.exists():
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", FROZEN[k], "milter", "rules"],
                check=True,
                capture_output=True,
            ).stdout
            with tempfile.TemporaryFile() as tmp:
                tmp.write(archive)
                tmp.seek(0)
                with tarfile.open(fileobj=tmp) as tar:
                    tar.extractall(tree, filter="data")
        env = {**os.environ, "PYTHONPATH": str(tree / "milter")}
        out = subprocess.run(
            [sys.executable, "-c", _COLLECT, str(tree), str(DATA / f"heldout{k}.tsv")],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout
        data = json.loads(out)
        if not str(data["module"]).startswith(str(tree)):
            raise SystemExit(f"heldout{k}: ran {data['module']}, not the old tree's explain")
        cache.write_text(json.dumps(data["lines"]), encoding="utf-8")
    return [(r, c, f) for r, c, f in json.loads(cache.read_text(encoding="utf-8"))]


def fix_of(know: Knowledge, category: str, klass: str) -> str:
    cat = know.categories[category]
    return cat.temporary_fix if klass == "4" and cat.temporary_fix else cat.fix


def lines_of(k: int, work: Path, know: Knowledge) -> list[Line]:
    cases = sample(k)
    old = collect(k, work)
    if len(old) != len(cases):
        raise SystemExit(f"heldout{k}: {len(old)} results for {len(cases)} lines")
    out = []
    for case, (rule, category, fix) in zip(cases, old, strict=True):
        feats, klass = line_features(case.reply)
        specific = know._specific_detail(parse_reply(clean_input(case.reply))) is not None
        out.append(
            Line(case, rule, category, fix or fix_of(know, category, klass), feats, klass, specific)
        )
    return out


def model_for(k: int, alpha: float) -> WordModel:
    return train_words(((c.reply, c.category) for c in tuning_cases(k)), alpha=alpha)


def overridable(line: Line, scope: str) -> bool:
    return (
        line.rule == FALLBACK_RULE
        and line.klass in ("4", "5", "")
        and (scope == "all" or not line.specific)
    )


def top(model: WordModel, line: Line, restrict: bool) -> tuple[str, float]:
    ranked = model.posterior(line.feats, line.klass if restrict else "")
    return ranked[0] if ranked else ("unknown", 0.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alpha", type=float, default=ALPHA)
    parser.add_argument("--threshold", type=float, default=THRESHOLD)
    parser.add_argument("--no-restrict", dest="restrict", action="store_false")
    parser.add_argument("--scope", choices=SCOPES, default="all")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "explain-bt")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    know = knowledge()
    samples = {k: lines_of(k, args.work, know) for k in FROZEN}
    alphas = sorted({*ALPHAS, args.alpha})

    # Every policy, pooled over K: right categories on the fallback lines.
    guesses: dict[tuple[int, float, bool], list[tuple[str, float]]] = {}
    for k, lines in samples.items():
        for alpha in alphas:
            model = model_for(k, alpha)
            for restrict in (True, False):
                guesses[k, alpha, restrict] = [top(model, line, restrict) for line in lines]
    fallback_n = sum(line.rule == FALLBACK_RULE for lines in samples.values() for line in lines)
    fallback_right = sum(
        line.rule == FALLBACK_RULE and line.category == line.case.category
        for lines in samples.values()
        for line in lines
    )
    print(f"pooled fallback lines: {fallback_n}, fallback right: {fallback_right}")
    thresholds = sorted({*THRESHOLDS, args.threshold})
    print("alpha restrict scope | " + " ".join(f"{t:>5}" for t in thresholds))
    for alpha in alphas:
        for restrict in (True, False):
            for scope in SCOPES:
                cells = []
                for t in thresholds:
                    right = 0
                    for k, lines in samples.items():
                        for line, (cat, p) in zip(lines, guesses[k, alpha, restrict], strict=True):
                            if line.rule != FALLBACK_RULE:
                                continue
                            answer = cat if overridable(line, scope) and p >= t else line.category
                            right += answer == line.case.category
                    cells.append(f"{right:>5}")
                print(f"{alpha:>5} {restrict!s:>8} {scope:>5} | " + " ".join(cells))

    print(
        f"\nchosen: alpha {args.alpha}, threshold {args.threshold}, "
        f"restrict {args.restrict}, scope {args.scope}"
    )
    header = (
        "| K | lines | fallback n | fallback right | combination right | fallback fix right"
        " | combination fix right | rules right (all lines) | model alone right (all lines) |"
    )
    print(header)
    print("|---" * 9 + "|")
    totals = [0] * 8
    for k, lines in samples.items():
        row = [len(lines), 0, 0, 0, 0, 0, 0, 0]
        for line, (cat, p) in zip(lines, guesses[k, args.alpha, args.restrict], strict=True):
            row[6] += line.category == line.case.category
            row[7] += cat == line.case.category
            if line.rule != FALLBACK_RULE:
                continue
            take = overridable(line, args.scope) and p >= args.threshold
            answer = cat if take else line.category
            fix = fix_of(know, cat, line.klass) if take else line.fix
            row[1] += 1
            row[2] += line.category == line.case.category
            row[3] += answer == line.case.category
            row[4] += line.fix == line.case.fix
            row[5] += fix == line.case.fix
        totals = [a + b for a, b in zip(totals, row, strict=True)]
        print(f"| {k} | " + " | ".join(map(str, row)) + " |")
    print("| pooled | " + " | ".join(map(str, totals)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
