"""A `group_by` key that resembles no column lists the columns sorted, swept keys before figures."""

from __future__ import annotations

import re

import pytest

from llem.report.stats import UnknownColumn, check_group_by


def test_unknown_group_by_key_lists_columns_sorted_by_kind() -> None:
    with pytest.raises(UnknownColumn) as caught:
        check_group_by(["zzzzqqq"], {"backend", "fp_precision", "backend.batch_size"})
    message = str(caught.value)
    match = re.fullmatch(r"group_by: no column zzzzqqq \(swept keys: (.*); figures and job fields: (.*)\)", message)
    assert match, message
    swept, figures = (part.split(", ") for part in match.groups())
    assert swept == ["backend", "backend.batch_size", "fp_precision"]
    assert figures == sorted(figures) and "energy_per_output_token_j" in figures and "cycle" in figures
    assert not set(swept) & set(figures)
