"""Regenerate ``rules/explain-words.toml``, explain's word model, from the tuning data.

Tuning data only: corpus.tsv's ``tune`` split, heldout2..heldout16, natural2, natural3, natural5,
natural6, vendors1, vendors2, natural7 and natural9 (tests/test_explain_corpus.py's TUNING_SPLITS);
never the held-out ``heldout`` split or a blind sample not yet read. tests/test_explain_words.py
regenerates the file the same way and fails when the shipped one differs. ``--check``: exit 1
instead of writing when it differs.

    .venv/bin/python -m bench.explain_words_model [--check]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from smtpguard.datafiles import default_rules_dir
from smtpguard.explain import train_words
from smtpguard.explain_words import FILE_NAME, HEADER, dumps
from tests.test_explain_corpus import CORPUS, DATA, TUNING_SPLITS, load_file


def tuning_pairs() -> list[tuple[str, str]]:
    """(reply, category) of every tuning line, in file order."""
    cases = [c for c in load_file(CORPUS, ("tune", "heldout")) if c.split == "tune"]
    for split in TUNING_SPLITS:
        if split != "tune":
            cases += load_file(DATA / f"{split}.tsv", (split,))
    return [(c.reply, c.category) for c in cases]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    text = dumps(train_words(tuning_pairs()), HEADER)
    path = default_rules_dir() / FILE_NAME
    if args.check:
        same = path.exists() and path.read_text(encoding="utf-8") == text
        print(f"{path}: {'up to date' if same else 'differs'}")
        return 0 if same else 1
    path.write_text(text, encoding="utf-8")
    print(f"{path}: {len(text.splitlines())} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
