"""Prompts from a Hugging Face dataset; `datasets` is optional, so it is imported only here, on use."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from llem.config.experiment import HFDatasetPrompts

INSTALL_HINT = "pip install datasets"


class ColumnTable(Protocol):
    """What `select_column` needs from a `datasets.Dataset`: column names and column access."""

    column_names: Sequence[str]

    def __getitem__(self, key: str) -> Sequence[Any]: ...


def import_datasets() -> ModuleType:
    """The `datasets` module, or an ImportError that says how to get it."""
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(
            f"prompts from a Hugging Face dataset need the `datasets` package; install it with `{INSTALL_HINT}`"
        ) from exc
    return datasets


def select_column(dataset: ColumnTable, column: str) -> list[tuple[int, str]]:
    """Non-empty text of `column` as (row index, text); missing or non-text columns are errors."""
    names = list(dataset.column_names)
    if column not in names:
        raise ValueError(f"dataset has no column {column!r}; columns: {', '.join(map(str, names)) or 'none'}")
    rows: list[tuple[int, str]] = []
    for index, value in enumerate(dataset[column]):
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(
                f"column {column!r} row {index} is {type(value).__name__}, not text; choose a text column"
            )
        if value.strip():
            rows.append((index, value.strip()))
    if not rows:
        raise ValueError(f"column {column!r} holds no non-empty text")
    return rows


def _is_saved_dataset(path: Path) -> bool:
    """A directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def load_hf_prompts(cfg: HFDatasetPrompts) -> list[tuple[int, str]]:
    """Read `cfg.split` of the dataset and return its `cfg.column` via `select_column`.

    A directory saved with `save_to_disk` is opened with `load_from_disk`; anything else goes to
    `load_dataset`, which may download from the Hub (and uses its local cache).
    """
    datasets = import_datasets()
    local = Path(cfg.path).expanduser()
    if _is_saved_dataset(local):
        loaded = datasets.load_from_disk(str(local))
        if isinstance(loaded, datasets.DatasetDict):
            if cfg.split not in loaded:
                raise ValueError(f"{local}: no split {cfg.split!r}; splits: {', '.join(loaded)}")
            loaded = loaded[cfg.split]
    else:
        loaded = datasets.load_dataset(cfg.path, cfg.subset, split=cfg.split)
    return select_column(loaded, cfg.column)
