"""docs/replies.md against the shipped reply table, rules/replies.toml.

The page is what operators read to learn what an id means; the TOML file is what the
milter sends. Both are edited by hand, so this keeps them from drifting apart.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "replies.md"
TABLE = ROOT / "rules" / "replies.toml"

#: The columns every reply table on the page has, in this order.
COLUMNS = ("id", "code", "xcode", "en", "zh", "stage", "trigger")


def _cells(line: str) -> list[str]:
    # Cells never contain "|" (the texts have none); backticks only mark literals.
    return [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]


def parse_tables(text: str) -> list[dict[str, str]]:
    """Every row of every Markdown table on the page whose header is :data:`COLUMNS`."""
    rows: list[dict[str, str]] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("|") or tuple(_cells(line)) != COLUMNS:
            continue
        assert re.fullmatch(r"\|(\s*-+\s*\|)+", lines[i + 1].strip()), lines[i + 1]
        for row in lines[i + 2 :]:
            if not row.startswith("|"):
                break
            cells = _cells(row)
            assert len(cells) == len(COLUMNS), row
            rows.append(dict(zip(COLUMNS, cells, strict=True)))
    return rows


@pytest.fixture(scope="module")
def doc_rows() -> list[dict[str, str]]:
    rows = parse_tables(DOC.read_text(encoding="utf-8"))
    assert rows, f"no reply table found in {DOC}"
    return rows


@pytest.fixture(scope="module")
def shipped() -> dict[str, dict[str, object]]:
    with TABLE.open("rb") as fh:
        return tomllib.load(fh)


def test_every_shipped_id_is_documented_once(
    doc_rows: list[dict[str, str]], shipped: dict[str, dict[str, object]]
) -> None:
    ids = [row["id"] for row in doc_rows]
    assert len(ids) == len(set(ids)), "an id appears twice in docs/replies.md"
    assert sorted(ids) == sorted(shipped)


def test_codes_and_texts_agree(
    doc_rows: list[dict[str, str]], shipped: dict[str, dict[str, object]]
) -> None:
    for row in doc_rows:
        toml = shipped[row["id"]]
        text = toml["text"]
        assert isinstance(text, dict)
        documented = (row["code"], row["xcode"], row["en"], row["zh"])
        assert documented == (toml["code"], toml["xcode"], text["en"], text["zh"]), row["id"]


def test_stage_column_names_the_shipped_stage(
    doc_rows: list[dict[str, str]], shipped: dict[str, dict[str, object]]
) -> None:
    for row in doc_rows:
        stage = shipped[row["id"]]["stage"]
        assert isinstance(stage, str)
        words = re.findall(r"[a-z]+", row["stage"].lower())
        assert stage in words, f"{row['id']}: stage {row['stage']!r}, TOML says {stage!r}"


def test_parser_reads_a_table_and_ignores_others() -> None:
    page = (
        "| a | b |\n|---|---|\n| x | y |\n\n"
        "| id | code | xcode | en | zh | stage | trigger |\n"
        "|---|---|---|---|---|---|---|\n"
        "| one | 550 | 5.1.1 | `text.` | `文` | rcpt | why |\n"
        "\nafter\n"
    )
    assert parse_tables(page) == [
        {
            "id": "one",
            "code": "550",
            "xcode": "5.1.1",
            "en": "text.",
            "zh": "文",
            "stage": "rcpt",
            "trigger": "why",
        }
    ]
