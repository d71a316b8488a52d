"""Backtest of explain's word model (smtpguard/explain_words.py) on the past blind samples.

Each past blind sample heldoutK.tsv (K = 2..16) was measured once with the rules of the
commit that added it (:data:`FROZEN`), before any of its misses were read. This replays
that: it runs THAT commit's ``explain`` code and rules (``git archive`` into a scratch
directory, one subprocess per sample, ``PYTHONPATH`` on the old tree) over heldoutK's
lines and records the rule id, category, source and ``weak`` flag of each. A word model
is trained on what was tuning data then (corpus.tsv's ``tune`` split and
heldout2..heldout(K-1), current labels) and asked where the old rules fell back to
``rfc3463-fallback``, and, as a second opinion, where a rule or weak words answered.

Printed: per policy (smoothing ``alpha`` or the softmax model, the class restriction,
the scope, threshold) the pooled count of right categories on the fallback lines, and
the softmax model's per K; who answered each line under the old rules (:data:`KINDS`),
per K; the model as a second opinion on each kind of rule answer (:data:`OVERRULED`,
thresholds :data:`SECOND_THRESHOLDS`): per K the lines it turned right (+) and wrong
(-); then, for the chosen policy (the options), per K and pooled: fallback lines,
fallback right, combination right (and fixes), the model alone on every line of
heldoutK against the old rules, weak words overruled, and all lines old and chosen.

The model's features come from today's parser (``parse_reply``/``plain_text``), not the
old commit's: the parser changed a little since heldout2, mostly for pasted prefixes.

``--variants`` also compares the shipped model with variants of its features (word
pairs, 5-letter word prefixes, no codes) and a Bernoulli naive Bayes (which counts the
absence of a feature too), each under every threshold pair: all lines right, pooled.

Never reads the held-out ``heldout`` split of corpus.tsv (nor a blind sample of the
time; there is none now).

    .venv/bin/python -m bench.explain_backtest [--alpha 0.1] [--threshold 0.6]
        [--keywords-threshold 0.95] [--no-restrict] [--scope all|code]
        [--work /tmp/explain-bt]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import re
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from smtpguard.explain import (
    FALLBACK_RULE,
    GENERIC_SOURCES,
    KEYWORDS_RULE,
    Knowledge,
    ParsedReply,
    clean_input,
    knowledge,
    parse_reply,
    train_words,
)
from smtpguard.explain_words import (
    ALPHA,
    KEYWORDS_THRESHOLD,
    THRESHOLD,
    WordModel,
    features,
    train,
)
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
    10: "74f6dea",
    11: "91fb009",
    12: "3e05ac5",
    13: "80dfdca",
    14: "59b7eb6",
    15: "789083a",
    16: "f788cea",
}
ALPHAS = (0.1, 0.5, 1.0)
THRESHOLDS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
#: ``all``: every line the fallback answered; ``code``: only those whose enhanced code
#: has no specific RFC 3463 detail (the fallback then guesses from a code or class).
SCOPES = ("all", "code")
#: Who answered a line under the old rules (:attr:`Line.kind`).
KINDS = ("ours", "specific", "generic", "weak", "keywords", "fallback")
#: Second opinion: the kinds of rule answer the model may overrule, narrowest first.
OVERRULED: dict[str, frozenset[str]] = {
    "keywords": frozenset({"keywords"}),
    "weak": frozenset({"keywords", "weak"}),
    "generic": frozenset({"keywords", "weak", "generic"}),
    "rules": frozenset({"keywords", "weak", "generic", "specific"}),
}
SECOND_THRESHOLDS = (0.8, 0.9, 0.95, 0.99)
#: The softmax model's SGD: epochs, first step size, L2 decay per step.
SGD_EPOCHS = 6
SGD_RATE = 0.5
SGD_DECAY = 1e-3
#: The models the second opinion is tried with (their names in the tables).
NAIVE_BAYES = "nb"
SOFTMAX = "softmax"
MODELS = (NAIVE_BAYES, SOFTMAX)

#: Run inside the old tree: its explain over a tsv's replies, as JSON.
_COLLECT = """
import json, sys
from pathlib import Path
import smtpguard.explain as e
know = e.knowledge(Path(sys.argv[1]) / "rules")
out = {"module": e.__file__, "lines": []}
weak = {rule.id for rule in know.rules if getattr(rule, "weak", False)}
for line in Path(sys.argv[2]).read_text(encoding="utf-8").splitlines():
    if not line or line.startswith("#"):
        continue
    exp = know.explain(line.split("\\t")[4])
    fix = getattr(exp, "fix", None)
    out["lines"].append([exp.rule, exp.category, fix, exp.source, exp.rule in weak])
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
    #: The old explanation's ``source`` and whether its rule was ``weak`` (False for
    #: commits before rules could be weak).
    source: str = ""
    weak: bool = False

    @property
    def kind(self) -> str:
        """Who answered under the old rules: one of :data:`KINDS`."""
        return answer_kind(self.rule, self.source, self.weak)


def answer_kind(rule: str, source: str, weak: bool) -> str:
    """Who gave an explanation (its rule id, the rule's source, whether it is weak): one
    of :data:`KINDS`."""
    if rule == FALLBACK_RULE:
        return "fallback"
    if rule.startswith("ours."):
        return "ours"
    if rule == KEYWORDS_RULE:
        return "keywords"
    if weak:
        return "weak"
    return "generic" if source in GENERIC_SOURCES else "specific"


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


def collect(k: int, work: Path) -> list[tuple[str, str, str | None, str, bool]]:
    """(rule, category, fix, source, weak) of each heldoutK line under the commit that
    added it."""
    return collect_sample(f"heldout{k}", FROZEN[k], work)


def collect_sample(
    name: str, commit: str, work: Path
) -> list[tuple[str, str, str | None, str, bool]]:
    """(rule, category, fix, source, weak) of each line of tests/data/explain/NAME.tsv
    under the code and rules of COMMIT (cached in WORK)."""
    cache = work / f"{name}.v2.json"
    if not cache.exists():
        tree = work / (
            f"tree{name.removeprefix('heldout')}" if name.startswith("heldout") else f"tree-{name}"
        )
        if not tree.exists():
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", commit, "milter", "rules"],
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
            [sys.executable, "-c", _COLLECT, str(tree), str(DATA / f"{name}.tsv")],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout
        data = json.loads(out)
        if not str(data["module"]).startswith(str(tree)):
            raise SystemExit(f"{name}: ran {data['module']}, not the old tree's explain")
        cache.write_text(json.dumps(data["lines"]), encoding="utf-8")
    return [(r, c, f, src, w) for r, c, f, src, w in json.loads(cache.read_text(encoding="utf-8"))]


def fix_of(know: Knowledge, category: str, klass: str) -> str:
    cat = know.categories[category]
    return cat.temporary_fix if klass == "4" and cat.temporary_fix else cat.fix


def lines_of(k: int, work: Path, know: Knowledge) -> list[Line]:
    cases = sample(k)
    old = collect(k, work)
    if len(old) != len(cases):
        raise SystemExit(f"heldout{k}: {len(old)} results for {len(cases)} lines")
    out = []
    for case, (rule, category, old_fix, source, weak) in zip(cases, old, strict=True):
        feats, klass = line_features(case.reply)
        specific = know._specific_detail(parse_reply(clean_input(case.reply))) is not None
        fix = old_fix or fix_of(know, category, klass)
        out.append(Line(case, rule, category, fix, feats, klass, specific, source, weak))
    return out


def model_for(k: int, alpha: float) -> WordModel:
    return train_words(((c.reply, c.category) for c in tuning_cases(k)), alpha=alpha)


class Posterior(Protocol):
    def posterior(self, feats: Sequence[str], klass: str) -> list[tuple[str, float]]: ...


@dataclass(frozen=True, slots=True)
class SoftmaxModel:
    """Multinomial logistic regression over the word model's features: one weight per
    (feature, category), trained by SGD on the log loss with L2 decay."""

    categories: tuple[str, ...]
    weights: Mapping[str, Sequence[float]]
    bias: Sequence[float]
    #: Per class ("4", "5"): indexes of the categories a reply of that class may get.
    allowed: Mapping[str, Sequence[int]]

    def scores(self, feats: Sequence[str]) -> list[float]:
        scores = list(self.bias)
        for f in feats:
            row = self.weights.get(f)
            if row is not None:
                scores = [s + w for s, w in zip(scores, row, strict=True)]
        return scores

    def posterior(self, feats: Sequence[str], klass: str) -> list[tuple[str, float]]:
        scores = self.scores(feats)
        index = self.allowed.get(klass, range(len(self.categories)))
        top = max(scores[i] for i in index)
        weights = {self.categories[i]: math.exp(scores[i] - top) for i in index}
        total = sum(weights.values())
        return sorted(((c, w / total) for c, w in weights.items()), key=lambda cp: (-cp[1], cp[0]))


def train_softmax(
    examples: Sequence[tuple[Sequence[str], str]],
    *,
    epochs: int = SGD_EPOCHS,
    rate: float = SGD_RATE,
    decay: float = SGD_DECAY,
) -> SoftmaxModel:
    """SGD over the examples in a seeded shuffled order per epoch (the same data give
    the same model), the step falling as 1/(1 + epoch)."""
    categories = tuple(sorted({c for _, c in examples}))
    at = {c: i for i, c in enumerate(categories)}
    n = len(categories)
    weights: dict[str, list[float]] = {}
    bias = [0.0] * n
    order = list(range(len(examples)))
    rng = random.Random(0)
    for epoch in range(epochs):
        rng.shuffle(order)
        step = rate / (1 + epoch)
        keep = 1 - step * decay
        for i in order:
            feats, category = examples[i]
            rows = [weights.setdefault(f, [0.0] * n) for f in feats]
            scores = list(bias)
            for row in rows:
                scores = [s + w for s, w in zip(scores, row, strict=True)]
            top = max(scores)
            exps = [math.exp(s - top) for s in scores]
            total = sum(exps)
            grad = [step * e / total for e in exps]
            grad[at[category]] -= step
            for row in rows:
                row[:] = [w * keep - g for w, g in zip(row, grad, strict=True)]
            bias = [b - g for b, g in zip(bias, grad, strict=True)]
    allowed = {
        klass: sorted({at[c] for feats, c in examples if f"class:{klass}" in feats})
        for klass in ("4", "5")
    }
    return SoftmaxModel(categories, weights, bias, allowed)


def softmax_for(k: int) -> SoftmaxModel:
    examples = []
    for case in tuning_cases(k):
        feats, klass = line_features(case.reply)
        if klass in ("4", "5", ""):
            examples.append((feats, case.category))
    return train_softmax(examples)


def overridable(line: Line, scope: str) -> bool:
    return (
        line.rule == FALLBACK_RULE
        and line.klass in ("4", "5", "")
        and (scope == "all" or not line.specific)
    )


def top(model: Posterior, line: Line, restrict: bool) -> tuple[str, float]:
    ranked = model.posterior(line.feats, line.klass if restrict else "")
    return ranked[0] if ranked else ("unknown", 0.0)


def overrules(line: Line, guess: tuple[str, float], kinds: frozenset[str], least: float) -> bool:
    """The second opinion: the model's category replaces a rule's of one of ``kinds``
    when it differs and the model is at least ``least`` sure."""
    category, p = guess
    return (
        line.kind in kinds
        and line.klass in ("4", "5", "")
        and category != line.category
        and p >= least
    )


def takes_guess(
    line: Line, guess: tuple[str, float], least: float, second: float, scope: str = "all"
) -> bool:
    """The shipped policy: the model's category replaces the codes' (fallback lines in
    ``scope``) at ``least``, and weak words' at ``second``."""
    if line.rule == FALLBACK_RULE:
        return overridable(line, scope) and guess[1] >= least
    return overrules(line, guess, OVERRULED["keywords"], second)


def print_kinds(samples: Mapping[int, list[Line]]) -> None:
    """Per K: how many lines each kind of answer took, and how many it got right."""
    print("\nwho answered under the old rules: lines/right per K")
    print("| kind | " + " | ".join(f"K={k}" for k in samples) + " | pooled |")
    print("|---" * (len(samples) + 2) + "|")
    for kind in KINDS:
        cells = []
        for lines in (*samples.values(), [x for xs in samples.values() for x in xs]):
            n = sum(line.kind == kind for line in lines)
            right = sum(line.kind == kind and line.category == line.case.category for line in lines)
            cells.append(f"{n}/{right}")
        print(f"| {kind} | " + " | ".join(cells) + " |")


def print_second_opinions(
    know: Knowledge,
    samples: Mapping[int, list[Line]],
    guesses: Mapping[tuple[str, int], list[tuple[str, float]]],
    thresholds: Sequence[float],
) -> None:
    """Every second-opinion policy: per K the lines it changed to right (+) and from
    right (-), pooled net, the number of K it improved and worsened, and the net change
    of right fixes."""
    print("\nsecond opinion on the rules' answers (model, kinds overruled, threshold)")
    print("| model | overrules | T | " + " | ".join(f"K={k}" for k in samples), end="")
    print(" | pooled net | K better | K worse | fix net |")
    print("|---" * (len(samples) + 7) + "|")
    for name in MODELS:
        for scope, kinds in OVERRULED.items():
            for least in thresholds:
                cells, net, better, worse, fixes = [], 0, 0, 0, 0
                for k, lines in samples.items():
                    gained = lost = 0
                    for line, guess in zip(lines, guesses[name, k], strict=True):
                        if not overrules(line, guess, kinds, least):
                            continue
                        gained += guess[0] == line.case.category
                        lost += line.category == line.case.category
                        fixes += (fix_of(know, guess[0], line.klass) == line.case.fix) - (
                            line.fix == line.case.fix
                        )
                    cells.append(f"+{gained}-{lost}")
                    net += gained - lost
                    better += gained > lost
                    worse += gained < lost
                row = [name, scope, str(least), *cells, f"{net:+d}", str(better), str(worse)]
                print("| " + " | ".join(row) + f" | {fixes:+d} |")


#: ``--variants``: threshold pairs (fallback, second opinion on weak words); 1.01 = none.
VARIANT_THRESHOLDS = ((0.5, 0.95), (0.6, 0.9), (0.6, 0.95), (0.7, 0.95), (0.8, 0.99), (0.6, 1.01))
_WORD = re.compile(r"\w+")


def _words(plain: str) -> list[str]:
    """The model's words in order (no digits, longer than one letter)."""
    return [
        w for w in _WORD.findall(plain.lower()) if len(w) > 1 and not any(c.isdigit() for c in w)
    ]


def _pairs(reply: ParsedReply) -> tuple[str, ...]:
    base = features(reply.code, reply.xcode, reply.plain)
    words = _words(reply.plain)
    return tuple(sorted({*base, *(f"{a}_{b}" for a, b in itertools.pairwise(words))}))


def _prefixes(reply: ParsedReply) -> tuple[str, ...]:
    base = features(reply.code, reply.xcode, reply.plain)
    return tuple(sorted({*base, *(f"p:{w[:5]}" for w in _words(reply.plain) if len(w) > 5)}))


def _no_codes(reply: ParsedReply) -> tuple[str, ...]:
    base = features(reply.code, reply.xcode, reply.plain)
    return tuple(f for f in base if not f.startswith(("code:", "xcode:", "detail:")))


FEATURE_VARIANTS: dict[str, Callable[[ParsedReply], tuple[str, ...]]] = {
    "shipped": lambda r: features(r.code, r.xcode, r.plain),
    "word pairs": _pairs,
    "prefixes": _prefixes,
    "no codes": _no_codes,
}


@dataclass(frozen=True, slots=True)
class BernoulliModel:
    """Naive Bayes over the presence and the absence of each known feature."""

    prior: Mapping[str, float]
    #: Per category: log P(absent) summed over the vocabulary, and per feature
    #: log P(present) - log P(absent).
    absent: Mapping[str, float]
    present: Mapping[str, Mapping[str, float]]
    allowed: Mapping[str, Sequence[str]]

    def posterior(self, feats: Sequence[str], klass: str) -> list[tuple[str, float]]:
        scores = {}
        for c in self.allowed.get(klass) or sorted(self.prior):
            gain = self.present[c]
            scores[c] = self.prior[c] + self.absent[c] + sum(gain.get(f, 0.0) for f in set(feats))
        top = max(scores.values())
        weights = {c: math.exp(s - top) for c, s in scores.items()}
        total = sum(weights.values())
        return sorted(((c, w / total) for c, w in weights.items()), key=lambda cp: (-cp[1], cp[0]))


def train_bernoulli(
    examples: Sequence[tuple[Sequence[str], str]], alpha: float = 0.1
) -> BernoulliModel:
    lines: Counter[str] = Counter(c for _, c in examples)
    counts: dict[str, Counter[str]] = {c: Counter() for c in lines}
    for feats, c in examples:
        counts[c].update(set(feats))
    vocabulary = {f for n in counts.values() for f in n}
    total = sum(lines.values())
    absent, present = {}, {}
    for c, n in lines.items():
        p = {f: (counts[c][f] + alpha) / (n + 2 * alpha) for f in vocabulary}
        absent[c] = sum(math.log(1 - q) for q in p.values())
        present[c] = {f: math.log(q) - math.log(1 - q) for f, q in p.items()}
    allowed = {k: sorted(c for c in lines if counts[c][f"class:{k}"]) for k in ("4", "5")}
    prior = {c: math.log(n / total) for c, n in lines.items()}
    return BernoulliModel(prior, absent, present, allowed)


def print_variants(samples: Mapping[int, list[Line]]) -> None:
    """All lines right, pooled, for each feature variant and model under each pair of
    thresholds (fallback, second opinion on weak words)."""
    parsed: dict[str, ParsedReply] = {}

    def reply_of(text: str) -> ParsedReply:
        if text not in parsed:
            parsed[text] = parse_reply(clean_input(text))
        return parsed[text]

    print("\nvariants: all lines right, pooled (fallback threshold / weak-words threshold)")
    print("| features | model | " + " | ".join(f"{a}/{b}" for a, b in VARIANT_THRESHOLDS) + " |")
    print("|---" * (len(VARIANT_THRESHOLDS) + 2) + "|")
    for name, feats_of in FEATURE_VARIANTS.items():
        for model_name in ("naive Bayes", "Bernoulli"):
            guesses: dict[int, list[tuple[str, float]]] = {}
            for k, lines in samples.items():
                examples = [
                    (feats_of(reply_of(c.reply)), c.category)
                    for c in tuning_cases(k)
                    if reply_of(c.reply).klass in ("4", "5", "")
                ]
                model: Posterior = (
                    train_bernoulli(examples)
                    if model_name == "Bernoulli"
                    else train(examples, alpha=ALPHA, threshold=THRESHOLD)
                )
                guesses[k] = []
                for line in lines:
                    ranked = model.posterior(feats_of(reply_of(line.case.reply)), line.klass)
                    guesses[k].append(ranked[0] if ranked else ("", 0.0))
            cells = []
            for least, second in VARIANT_THRESHOLDS:
                right = 0
                for k, lines in samples.items():
                    for line, guess in zip(lines, guesses[k], strict=True):
                        answer = guess[0] if takes_guess(line, guess, least, second) else None
                        right += (answer or line.category) == line.case.category
                cells.append(str(right))
            print(f"| {name} | {model_name} | " + " | ".join(cells) + " |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alpha", type=float, default=ALPHA)
    parser.add_argument("--threshold", type=float, default=THRESHOLD)
    parser.add_argument("--keywords-threshold", type=float, default=KEYWORDS_THRESHOLD)
    parser.add_argument("--no-restrict", dest="restrict", action="store_false")
    parser.add_argument("--scope", choices=SCOPES, default="all")
    parser.add_argument("--variants", action="store_true", help="also the feature variants")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "explain-bt")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    know = knowledge()
    samples = {k: lines_of(k, args.work, know) for k in FROZEN}
    alphas = sorted({*ALPHAS, args.alpha})

    # Every policy, pooled over K: right categories on the fallback lines.
    guesses: dict[tuple[int, float | str, bool], list[tuple[str, float]]] = {}
    for k, lines in samples.items():
        models: dict[float | str, Posterior] = {alpha: model_for(k, alpha) for alpha in alphas}
        models[SOFTMAX] = softmax_for(k)
        for key, model in models.items():
            for restrict in (True, False):
                guesses[k, key, restrict] = [top(model, line, restrict) for line in lines]
    fallback_n = sum(line.rule == FALLBACK_RULE for lines in samples.values() for line in lines)
    fallback_right = sum(
        line.rule == FALLBACK_RULE and line.category == line.case.category
        for lines in samples.values()
        for line in lines
    )
    print(f"pooled fallback lines: {fallback_n}, fallback right: {fallback_right}")
    thresholds = sorted({*THRESHOLDS, args.threshold})
    print("alpha restrict scope | " + " ".join(f"{t:>5}" for t in thresholds))
    for key in (*alphas, SOFTMAX):
        for restrict in (True, False):
            for scope in SCOPES:
                cells = []
                for t in thresholds:
                    right = 0
                    for k, lines in samples.items():
                        for line, (cat, p) in zip(lines, guesses[k, key, restrict], strict=True):
                            if line.rule != FALLBACK_RULE:
                                continue
                            answer = cat if overridable(line, scope) and p >= t else line.category
                            right += answer == line.case.category
                    cells.append(f"{right:>5}")
                print(f"{key!s:>7} {restrict!s:>8} {scope:>5} | " + " ".join(cells))
    print(f"\nthe softmax model ({SOFTMAX}, restricted) on the fallback lines, right per K:")
    for t in thresholds:
        per_k = []
        for k, lines in samples.items():
            per_k.append(0)
            for line, (cat, p) in zip(lines, guesses[k, SOFTMAX, True], strict=True):
                if line.rule == FALLBACK_RULE:
                    answer = cat if overridable(line, "all") and p >= t else line.category
                    per_k[-1] += answer == line.case.category
        print(f"  {t:>5}: " + " ".join(map(str, per_k)) + f" = {sum(per_k)}")

    print_kinds(samples)
    named = {
        (name, k): guesses[k, args.alpha if name == NAIVE_BAYES else SOFTMAX, True]
        for name in MODELS
        for k in samples
    }
    second = sorted({*SECOND_THRESHOLDS, args.keywords_threshold})
    print_second_opinions(know, samples, named, second)
    if args.variants:
        print_variants(samples)

    print(
        f"\nchosen: alpha {args.alpha}, threshold {args.threshold}, "
        f"restrict {args.restrict}, scope {args.scope}; "
        f"overrules keywords at {args.keywords_threshold}"
    )
    header = (
        "| K | lines | fallback n | fallback right | combination right | fallback fix right"
        " | combination fix right | rules right (all lines) | model alone right (all lines)"
        " | keywords n | keywords right | overruled right | all lines right, old"
        " | all lines right, chosen | all fixes right, old | all fixes right, chosen |"
    )
    print(header)
    print("|---" * 16 + "|")
    totals = [0] * 15
    for k, lines in samples.items():
        row = [len(lines), *[0] * 14]
        for line, (cat, p) in zip(lines, guesses[k, args.alpha, args.restrict], strict=True):
            row[6] += line.category == line.case.category
            row[7] += cat == line.case.category
            answer, fix = line.category, line.fix
            if takes_guess(line, (cat, p), args.threshold, args.keywords_threshold, args.scope):
                answer, fix = cat, fix_of(know, cat, line.klass)
            if line.rule == FALLBACK_RULE:
                row[1] += 1
                row[2] += line.category == line.case.category
                row[3] += answer == line.case.category
                row[4] += line.fix == line.case.fix
                row[5] += fix == line.case.fix
            elif line.kind == "keywords":
                row[8] += 1
                row[9] += line.category == line.case.category
                row[10] += answer == line.case.category
            row[11] += line.category == line.case.category
            row[12] += answer == line.case.category
            row[13] += line.fix == line.case.fix
            row[14] += fix == line.case.fix
        totals = [a + b for a, b in zip(totals, row, strict=True)]
        print(f"| {k} | " + " | ".join(map(str, row)) + " |")
    print("| pooled | " + " | ".join(map(str, totals)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
