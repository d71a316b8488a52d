"""explain's word model (smtpguard/explain_words.py): its features, its place after the
rules and before the RFC 3463 fallback, its second opinion on weak words, its file's
validation, and the shipped file being exactly what the tuning data generate."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpguard.config import ConfigError
from smtpguard.explain import FALLBACK_RULE, Knowledge, knowledge, load_knowledge, train_words
from smtpguard.explain_words import (
    ALPHA,
    FILE_NAME,
    HEADER,
    KEYWORDS_THRESHOLD,
    THRESHOLD,
    WORDS_RULE,
    WordModel,
    dumps,
    features,
    load_words,
    train,
)
from support.service import RULES
from test_explain_corpus import CORPUS, DATA, TUNING_SPLITS, load_file

EXPLAIN = RULES / "explain.toml"
#: Lines no rule matches: without a model, the codes alone answer them.
SPAMMY = "550 5.9.9 zzz frobnicated qux"
FULL = "452 4.9.9 zzz brimming qux"


def tiny(threshold: float = 0.6, keywords_threshold: float = 0.95) -> WordModel:
    """Two categories: "frobnicated" only ever in 5xx spam, "brimming" in 4xx
    full mailboxes; "qux" in both."""
    return train(
        [
            (("frobnicated", "qux", "class:5", "code:550"), "spam"),
            (("frobnicated", "class:5", "code:554"), "spam"),
            (("brimming", "qux", "class:4", "code:452"), "mailbox_full"),
            (("brimming", "class:4", "code:452"), "mailbox_full"),
        ],
        alpha=0.5,
        threshold=threshold,
        keywords_threshold=keywords_threshold,
    )


@pytest.fixture(scope="module")
def plain() -> Knowledge:
    return load_knowledge(EXPLAIN)


def test_the_lines_reach_the_fallback_without_a_model(plain: Knowledge) -> None:
    assert plain.words_model() is None
    assert plain.explain(SPAMMY).rule == FALLBACK_RULE
    assert plain.explain(FULL).rule == FALLBACK_RULE


def test_features_are_words_without_names_or_numbers_and_the_codes() -> None:
    assert features("550", "5.7.001", "Mail from <address> at <host> refused, id A1B2") == (
        "address",
        "at",
        "class:5",
        "code:550",
        "detail:7.1",
        "from",
        "host",
        "id",
        "mail",
        "refused",
        "subject:5.7",
        "xcode:5.7.1",
    )
    # Chinese has no spaces: character pairs.
    assert features(None, None, "邮箱已满") == ("已满", "箱已", "邮箱")
    assert features(None, "4.2.2", "x") == ("class:4", "detail:2.2", "subject:4.2", "xcode:4.2.2")


def test_a_sure_guess_answers_before_the_fallback() -> None:
    know = load_knowledge(EXPLAIN, words=tiny())
    exp = know.explain(SPAMMY)
    assert (exp.rule, exp.category, exp.fix, exp.source) == (
        WORDS_RULE,
        "spam",
        "clean_content",
        "generic",
    )
    assert exp.permanent
    assert "Guessed from the reply's words" in exp.cause_en
    assert "推测" in exp.cause_zh
    # A temporary reply gets its category's temporary fix, as from any rule.
    full = know.explain(FULL)
    assert (full.rule, full.category, full.fix) == (WORDS_RULE, "mailbox_full", "retry_later")


def test_rules_still_come_first() -> None:
    know = load_knowledge(EXPLAIN, words=tiny())
    exp = know.explain("550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown")
    assert exp.rule != WORDS_RULE
    assert exp.category == "unknown_recipient"


def test_below_the_threshold_the_codes_answer() -> None:
    # Without a code both categories may answer, and "qux" is in both.
    know = load_knowledge(EXPLAIN, words=tiny(threshold=0.8))
    assert know.explain("zzz qux").rule == FALLBACK_RULE
    assert know.explain("zzz frobnicated").rule == WORDS_RULE


def test_a_sure_model_overrules_weak_words(plain: Knowledge) -> None:
    # "quota" is a weak word of mailbox_full; a 5xx can only be spam to the tiny model.
    line = "550 5.9.9 zzz quota frobnicated"
    assert (plain.explain(line).rule, plain.explain(line).category) == (
        "keywords",
        "mailbox_full",
    )
    exp = load_knowledge(EXPLAIN, words=tiny()).explain(line)
    assert (exp.rule, exp.category, exp.fix) == (WORDS_RULE, "spam", "clean_content")
    assert "Guessed from the reply's words" in exp.cause_en


def test_weak_words_stay_when_the_model_agrees_or_is_not_sure_enough() -> None:
    know = load_knowledge(EXPLAIN, words=tiny())
    agreed = know.explain("452 4.9.9 zzz quota brimming")
    assert (agreed.rule, agreed.category) == ("keywords", "mailbox_full")
    # Without a code both categories may answer: spam at 0.83, above the fallback's
    # threshold (0.6) but below the one for overruling weak words.
    unsure = "zzz quota frobnicated"
    assert tiny().posterior(("frobnicated",), "")[0][1] == pytest.approx(0.833, abs=0.001)
    assert know.explain(unsure).rule == "keywords"
    bolder = load_knowledge(EXPLAIN, words=tiny(keywords_threshold=0.8))
    assert (bolder.explain(unsure).rule, bolder.explain(unsure).category) == (WORDS_RULE, "spam")


def test_a_category_is_only_given_to_the_classes_it_was_seen_with() -> None:
    model = tiny()
    assert model.allowed("4") == ["mailbox_full"]
    assert model.allowed("5") == ["spam"]
    assert model.allowed("") == ["mailbox_full", "spam"]
    know = load_knowledge(EXPLAIN, words=model)
    assert know.explain("451 4.9.9 zzz frobnicated").category != "spam"


def test_success_is_never_guessed() -> None:
    know = load_knowledge(EXPLAIN, words=tiny())
    exp = know.explain("250 2.0.0 frobnicated qux")
    assert (exp.rule, exp.category) == (FALLBACK_RULE, "accepted")


def test_posterior_sums_to_one_and_ranks() -> None:
    ranked = tiny().posterior(("frobnicated", "qux", "never-seen"), "")
    assert [c for c, _ in ranked] == ["spam", "mailbox_full"]
    assert sum(p for _, p in ranked) == pytest.approx(1.0)


def test_the_file_round_trips(tmp_path: Path) -> None:
    model = tiny()
    path = tmp_path / FILE_NAME
    path.write_text(dumps(model, "a test"), encoding="utf-8")
    assert load_words(path, ["spam", "mailbox_full"]) == model


def test_the_model_file_is_read_only_when_no_rule_answers(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    path.write_text("[model]\nversion = 2\n", encoding="utf-8")
    know = load_knowledge(EXPLAIN, words=path)
    assert know.explain("550 5.7.1 Relay access denied").category == "relay_denied"
    with pytest.raises(ConfigError) as caught:
        know.explain(SPAMMY)
    assert caught.value.file == str(path)
    assert caught.value.key == "model.alpha"


GOOD = """\
[model]
version = 2
alpha = 0.5
threshold = 0.6
keywords_threshold = 0.95

[category.spam]
lines = 2

[category.spam.features]
"spam" = 2
"""


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("version = 2", "version = 1", "model.version"),
        ("alpha = 0.5", "alpha = 0", "model.alpha"),
        ("alpha = 0.5", 'alpha = "x"', "model.alpha"),
        ("threshold = 0.6", "threshold = 1.5", "model.threshold"),
        ("threshold = 0.6", "threshold = 0.6\nbeta = 1", "model.beta"),
        ("keywords_threshold = 0.95", "keywords_threshold = -0.1", "model.keywords_threshold"),
        ("keywords_threshold = 0.95\n", "", "model.keywords_threshold"),
        ("[category.spam]", "[category.spammy]", "category.spammy"),
        ("[category.spam.features]", "[category.spammy.features]", "category.spam.features"),
        ("lines = 2", "lines = 0", "category.spam.lines"),
        ("lines = 2", "lines = true", "category.spam.lines"),
        ('"spam" = 2', '"spam" = 3', "category.spam.features.spam"),
        ('"spam" = 2', '"spam" = -1', "category.spam.features.spam"),
        ('"spam" = 2', '"spam" = "2"', "category.spam.features.spam"),
        ("lines = 2", "lines = 2\nwords = 1", "category.spam.words"),
        ("[model]", "[modell]", "modell"),
    ],
)
def test_a_malformed_file_names_file_and_key(tmp_path: Path, old: str, new: str, key: str) -> None:
    assert old in GOOD
    path = tmp_path / FILE_NAME
    path.write_text(GOOD.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_words(path, ["spam"])
    assert (caught.value.file, caught.value.key) == (str(path), key)


def test_a_file_without_categories_is_refused(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    path.write_text(
        "[model]\nversion = 2\nalpha = 1\nthreshold = 0.5\nkeywords_threshold = 0.9\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="category"):
        load_words(path, ["spam"])


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_words(tmp_path / FILE_NAME, ["spam"])
    assert caught.value.file == str(tmp_path / FILE_NAME)


def tuning_pairs() -> list[tuple[str, str]]:
    """(reply, category) of every tuning line; the held-out lines are dropped as they
    are read, never looked at."""
    cases = [c for c in load_file(CORPUS, ("tune", "heldout")) if c.split == "tune"]
    for split in TUNING_SPLITS:
        if split != "tune":
            cases += load_file(DATA / f"{split}.tsv", (split,))
    return [(c.reply, c.category) for c in cases]


def test_the_shipped_model_is_the_tuning_data_s_byte_for_byte() -> None:
    """So it can neither go stale nor hold a held-out line (regenerate it with
    ``.venv/bin/python -m bench.explain_words_model``)."""
    shipped = (RULES / FILE_NAME).read_text(encoding="utf-8")
    assert dumps(train_words(tuning_pairs()), HEADER) == shipped
    model = knowledge().words_model()
    assert model is not None
    assert (model.alpha, model.threshold, model.keywords_threshold) == (
        ALPHA,
        THRESHOLD,
        KEYWORDS_THRESHOLD,
    )


def test_a_rules_dir_without_the_file_has_no_model(tmp_path: Path) -> None:
    for name in ("explain.toml", "replies.toml"):
        (tmp_path / name).write_text((RULES / name).read_text(encoding="utf-8"), encoding="utf-8")
    assert knowledge(tmp_path).words_model() is None
    assert knowledge(tmp_path).explain(SPAMMY).rule == FALLBACK_RULE
