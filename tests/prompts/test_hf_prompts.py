"""Hugging Face dataset prompts, without `datasets` installed and without any download."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from llem.config.experiment import HFDatasetPrompts
from llem.prompts.hf import import_datasets, load_hf_prompts, select_column


class StubDataset:
    """Just enough of `datasets.Dataset` for column selection."""

    def __init__(self, columns: dict[str, list[Any]]) -> None:
        self._columns = columns
        self.column_names = list(columns)

    def __getitem__(self, key: str) -> list[Any]:
        return self._columns[key]


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match="pip install datasets"):
        import_datasets()
    with pytest.raises(ImportError, match="pip install datasets"):
        load_hf_prompts(HFDatasetPrompts(path="some/dataset"))


def test_select_column_keeps_non_empty_text() -> None:
    ds = StubDataset({"text": ["  hello ", None, "", "world"], "label": [0, 1, 2, 3]})
    assert select_column(ds, "text") == [(0, "hello"), (3, "world")]


def test_select_column_errors() -> None:
    ds = StubDataset({"text": ["a"], "label": [1], "empty": ["", None]})
    with pytest.raises(ValueError, match="no column 'prompt'; columns: text, label, empty"):
        select_column(ds, "prompt")
    with pytest.raises(ValueError, match="'label' row 0 is int"):
        select_column(ds, "label")
    with pytest.raises(ValueError, match="no non-empty text"):
        select_column(ds, "empty")


def test_load_passes_subset_and_split(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def load_dataset(path: str, name: str | None = None, *, split: str) -> StubDataset:
        calls.append((path, name, split))
        return StubDataset({"question": ["q1", "q2"]})

    fake = types.ModuleType("datasets")
    fake.load_dataset = load_dataset  # type: ignore[attr-defined]
    fake.DatasetDict = dict  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", fake)
    cfg = HFDatasetPrompts(path="org/qa", subset="en", split="test", column="question")
    assert load_hf_prompts(cfg) == [(0, "q1"), (1, "q2")]
    assert calls == [("org/qa", "en", "test")]
