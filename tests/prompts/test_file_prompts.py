"""Prompt files: .txt and .jsonl parsing, and errors that point at the file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llem.prompts.files import PromptFileError, read_prompt_file


def test_txt_one_prompt_per_non_empty_line(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("first prompt\n\n   \n  second prompt  \nthird\n", encoding="utf-8")
    assert read_prompt_file(f) == [(1, "first prompt"), (4, "second prompt"), (5, "third")]


def test_jsonl_reads_the_named_field(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    rows = [{"question": "What is 2+2?", "id": 1}, {"question": "Näme a colour.", "id": 2}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert read_prompt_file(f, field="question") == [(1, "What is 2+2?"), (2, "Näme a colour.")]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_prompt_file(missing)


def test_jsonl_missing_field_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a"}\n\n{"text": "b"}\n', encoding="utf-8")
    with pytest.raises(PromptFileError, match=r"p\.jsonl:3: .*'prompt'.*keys: text"):
        read_prompt_file(f)


@pytest.mark.parametrize(
    ("line", "message"),
    [("{not json", "not valid JSON"), ('["a"]', "expected a JSON object"), ('{"prompt": 3}', "expected a string")],
)
def test_jsonl_bad_lines_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "ok"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(PromptFileError, match=rf"p\.jsonl:2: .*{message}"):
        read_prompt_file(f)


def test_unsupported_suffix_empty_file_and_directory(tmp_path: Path) -> None:
    csv = tmp_path / "p.csv"
    csv.write_text("a,b\n")
    with pytest.raises(PromptFileError, match="use .txt or .jsonl"):
        read_prompt_file(csv)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(PromptFileError, match="no prompts"):
        read_prompt_file(empty)
    with pytest.raises(PromptFileError, match="not a file"):
        read_prompt_file(tmp_path)
