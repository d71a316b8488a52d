"""The word model: ``explain``'s guess from a reply's words when no rule matched.

A multinomial naive Bayes over the set of a reply's features (:func:`features`): its
words after :func:`smtpguard.explain.plain_text` (addresses and host names replaced),
Chinese and Japanese text as character pairs, and its codes (basic code, class, enhanced
code, RFC 3463 subject and detail). The counts are ``rules/explain-words.toml``,
generated from the labelled tuning data by ``bench/explain_words_model.py`` (never by
hand: ``tests/test_explain_words.py`` regenerates it and compares byte for byte).
:class:`smtpguard.explain.Knowledge` asks it where the RFC 3463 fallback would
answer, and takes its category only at a posterior of at least ``threshold``, among the
categories the tuning data ever gave to a reply of the same class (a 4xx is never told
a category only 5xx replies had). It is also a second opinion on weak words (the
``keywords`` answer): a category other than theirs, at a posterior of at least
``keywords_threshold``, replaces theirs.

No imports beyond the standard library and :mod:`smtpguard.datafiles`: the file is
read the first time the fallback is reached, so ``explain`` still starts fast.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smtpguard.datafiles import ConfigError, check_keys, read_toml, toml_table

#: The rule id of an explanation from the word model.
WORDS_RULE = "words-model"
FILE_NAME = "explain-words.toml"
#: 2: ``keywords_threshold`` (a version 1 file predates the second opinion).
FORMAT_VERSION = 2
#: Smoothing and thresholds of the shipped model, chosen by the pooled backtest on the
#: past blind samples (``bench/explain_backtest.py``; docs/explain.md). Weak words are
#: right more often than the codes, so overruling them takes a surer model.
ALPHA = 0.1
THRESHOLD = 0.6
KEYWORDS_THRESHOLD = 0.95
#: The shipped file's leading comment.
HEADER = (
    "explain's word model (smtpguard/explain_words.py). Generated, do not edit:\n"
    "    .venv/bin/python -m bench.explain_words_model\n"
    "from the tuning data only (tests/data/explain: the TUNING_SPLITS of\n"
    "tests/test_explain_corpus.py); tests/test_explain_words.py regenerates it and compares."
)

_TOKEN = re.compile(r"\w+")
#: Scripts written without spaces: a run of them is one ``\w+`` token, so it is cut
#: into character pairs ("邮箱已满" -> 邮箱, 箱已, 已满).
_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+")
_XCODE = re.compile(r"[2-5]\.[0-9]{1,3}\.[0-9]{1,3}\Z")
_FEATURE = re.compile(r"\S{1,200}\Z")


def features(code: str | None, xcode: str | None, plain: str) -> tuple[str, ...]:
    """The sorted, distinct features of a reply: its words (``plain`` is the text with
    addresses and hosts replaced), without any word holding a digit (queue ids, IP
    addresses, dates say nothing about the reason), and its codes."""
    out: set[str] = set()
    for token in _TOKEN.findall(plain.lower()):
        if any(ch.isdigit() for ch in token):
            continue
        runs = _CJK.findall(token)
        out.update(run[i : i + 2] for run in runs for i in range(max(1, len(run) - 1)))
        rest = _CJK.sub("", token) if runs else token
        if len(rest) > 1:
            out.add(rest)
    klass = (code or xcode or "")[:1]
    if klass:
        out.add(f"class:{klass}")
    if code is not None:
        out.add(f"code:{code}")
    if xcode is not None and _XCODE.match(xcode):
        _, subject, detail = (str(int(part)) for part in xcode.split("."))
        out.add(f"xcode:{klass}.{subject}.{detail}")
        out.add(f"subject:{klass}.{subject}")
        out.add(f"detail:{subject}.{detail}")
    return tuple(sorted(out))


@dataclass(frozen=True, slots=True)
class WordModel:
    """Per category: the number of tuning lines and, per feature, of lines with it."""

    #: Additive (Laplace) smoothing of the feature counts.
    alpha: float
    #: The least posterior at which the model's category is taken.
    threshold: float
    #: The least posterior at which the model's category replaces weak words' one.
    keywords_threshold: float
    lines: Mapping[str, int]
    counts: Mapping[str, Mapping[str, int]]
    # Per category: its log prior, the log likelihood of each feature it has, and of a
    # feature it never had (computed once: the fallback of a long log asks often).
    _prior: dict[str, float] = field(init=False, repr=False, compare=False)
    _likely: dict[str, dict[str, float]] = field(init=False, repr=False, compare=False)
    _unseen: dict[str, float] = field(init=False, repr=False, compare=False)
    _vocabulary: frozenset[str] = field(init=False, repr=False, compare=False)
    # Per reply class: :meth:`allowed`, filled as the classes are first asked for.
    _allowed: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        vocabulary = frozenset(f for counts in self.counts.values() for f in counts)
        total = sum(self.lines.values())
        norm = {
            c: math.log(sum(self.counts[c].values()) + self.alpha * len(vocabulary))
            for c in self.lines
        }
        likely = {
            c: {f: math.log(n + self.alpha) - norm[c] for f, n in self.counts[c].items()}
            for c in self.lines
        }
        object.__setattr__(self, "_vocabulary", vocabulary)
        object.__setattr__(self, "_allowed", {})
        object.__setattr__(self, "_prior", {c: math.log(n / total) for c, n in self.lines.items()})
        object.__setattr__(self, "_likely", likely)
        object.__setattr__(self, "_unseen", {c: math.log(self.alpha) - norm[c] for c in self.lines})

    def allowed(self, klass: str) -> list[str]:
        """The categories a reply of ``klass`` ("4", "5", "" for none) may get: those the
        tuning data gave to a reply of that class; any, for a reply without a code."""
        found = self._allowed.get(klass)
        if found is None:
            found = self._allowed[klass] = tuple(
                sorted(
                    c for c in self.lines if not klass or self.counts[c].get(f"class:{klass}", 0)
                )
            )
        return list(found)

    def posterior(self, feats: Sequence[str], klass: str) -> list[tuple[str, float]]:
        """(category, posterior) among :meth:`allowed`, most likely first. Features the
        tuning data never saw say nothing and are left out."""
        known = [f for f in feats if f in self._vocabulary]
        scores: dict[str, float] = {}
        for category in self.allowed(klass):
            likely = self._likely[category]
            unseen = self._unseen[category]
            scores[category] = self._prior[category] + sum(likely.get(f, unseen) for f in known)
        if not scores:
            return []
        top = max(scores.values())
        weights = {c: math.exp(s - top) for c, s in scores.items()}
        total = sum(weights.values())
        return sorted(((c, w / total) for c, w in weights.items()), key=lambda cp: (-cp[1], cp[0]))

    def guess(
        self, feats: Sequence[str], klass: str, threshold: float | None = None
    ) -> tuple[str, float] | None:
        """The most likely category and its posterior, when at least ``threshold``
        (default: the model's own), and when the words alone rank it first too: the
        codes' features otherwise carry a reply whose few words say nothing of it
        (review rev178 F3: "550 5.0.0 Failed" was auth_failed, "Go away" a HELO
        problem; on the corpus this gate leaves the fallback 57 answers, of which the
        model had 42 right and the fallback has 39)."""
        ranked = self.posterior(feats, klass)
        least = self.threshold if threshold is None else threshold
        if not ranked or ranked[0][1] < least:
            return None
        words = self.posterior([f for f in feats if ":" not in f], klass)
        return ranked[0] if words and words[0][0] == ranked[0][0] else None


def train(
    examples: Iterable[tuple[Sequence[str], str]],
    *,
    alpha: float,
    threshold: float,
    keywords_threshold: float = KEYWORDS_THRESHOLD,
) -> WordModel:
    """A model from (features, category) pairs."""
    lines: Counter[str] = Counter()
    counts: dict[str, Counter[str]] = {}
    for feats, category in examples:
        lines[category] += 1
        counts.setdefault(category, Counter()).update(set(feats))
    return WordModel(
        alpha,
        threshold,
        keywords_threshold,
        dict(sorted(lines.items())),
        {c: dict(sorted(counts[c].items())) for c in sorted(counts)},
    )


def dumps(model: WordModel, header: str) -> str:
    """The model as TOML, byte for byte the same for the same counts. ``header``
    becomes the leading comment (say how the file was made)."""
    out = [f"# {line}".rstrip() for line in header.splitlines()]
    out += ["", "[model]", f"version = {FORMAT_VERSION}"]
    out += [f"alpha = {model.alpha!r}", f"threshold = {model.threshold!r}"]
    out.append(f"keywords_threshold = {model.keywords_threshold!r}")
    for category in sorted(model.lines):
        name = json.dumps(category)
        out += ["", f"[category.{name}]", f"lines = {model.lines[category]}", ""]
        out.append(f"[category.{name}.features]")
        out += [
            f"{json.dumps(f, ensure_ascii=False)} = {n}" for f, n in model.counts[category].items()
        ]
    return "\n".join(out) + "\n"


def load_words(path: Path, categories: Iterable[str]) -> WordModel:
    """Read and validate a model file; every problem is a :class:`ConfigError` naming
    the file and key. ``categories``: the ids the explain rules define."""
    raw = read_toml(path)
    check_keys(path, "", raw, {"model", "category"})
    meta = toml_table(path, "model", raw.get("model"))
    check_keys(path, "model", meta, {"version", "alpha", "threshold", "keywords_threshold"})
    if meta.get("version") != FORMAT_VERSION:
        raise ConfigError(path, "model.version", f"expected {FORMAT_VERSION}")
    alpha = _number(path, "model.alpha", meta.get("alpha"))
    threshold = _number(path, "model.threshold", meta.get("threshold"))
    keywords_threshold = _number(path, "model.keywords_threshold", meta.get("keywords_threshold"))
    if alpha <= 0:
        raise ConfigError(path, "model.alpha", "must be above 0")
    for key, value in (("threshold", threshold), ("keywords_threshold", keywords_threshold)):
        if not 0 <= value <= 1:
            raise ConfigError(path, f"model.{key}", "must be between 0 and 1")
    known = set(categories)
    lines: dict[str, int] = {}
    counts: dict[str, dict[str, int]] = {}
    for category, value in toml_table(path, "category", raw.get("category")).items():
        key = f"category.{category}"
        if category not in known:
            raise ConfigError(path, key, f"unknown category {category!r}")
        entry = toml_table(path, key, value)
        check_keys(path, key, entry, {"lines", "features"})
        n = entry.get("lines")
        if not isinstance(n, int) or not _count(n) or n == 0:
            raise ConfigError(path, f"{key}.lines", "expected a positive integer")
        feats = toml_table(path, f"{key}.features", entry.get("features"))
        for name, count in feats.items():
            if not _FEATURE.match(name) or not _count(count) or count > n:
                raise ConfigError(
                    path, f"{key}.features.{name}", f"expected a count from 0 to lines ({n})"
                )
        lines[category] = n
        counts[category] = feats
    if not lines:
        raise ConfigError(path, "category", "no category")
    return WordModel(alpha, threshold, keywords_threshold, lines, counts)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(path: Path, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(path, key, "expected a number")
    return float(value)
