"""The app's number, time and path formats (cbir.app.formats): short, unit always, one style."""

from __future__ import annotations

import math

import pytest

from cbir.app import formats


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.000432, "0.43 ms"),
        (0.0099996, "10.0 ms"),
        (0.01867, "18.7 ms"),
        (0.41249, "412 ms"),
        (0.9996, "1.00 s"),
        (2.298, "2.30 s"),
        (41.23, "41.2 s"),
        (2727.58, "2728 s"),
        (math.nan, formats.DASH),
    ],
)
def test_duration_has_three_digits_and_a_unit(seconds: float, text: str) -> None:
    assert formats.duration(seconds) == text
    assert len(text) <= 7


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0"), (5418, "5,418"), (99_999, "99,999"), (541_800, "542k"), (1_000_000, "1.00M"), (-1, "–")]
)
def test_count_fits_six_characters(n: int, text: str) -> None:
    assert formats.count(n) == text and len(text) <= 6


def test_share_path_and_sentence() -> None:
    assert formats.share(0.07) == "7.0 %" and formats.share(1.0) == "100.0 %" and formats.share(None) == "–"
    assert formats.file_first("training_set/animals/coffee.png") == "coffee.png · training_set/animals"
    assert formats.file_first("coffee.png") == "coffee.png"
    assert formats.from_root("/c/training_set/animals/a.png", "/c") == "a.png · training_set/animals"
    assert formats.from_root("/elsewhere/x/training_set/animals/a.png", "/c") == "a.png · training_set/animals"
    assert formats.sentence("nothing was added: x") == "Nothing was added: x"


def test_human_columns_name_columns_and_blank_missing_text() -> None:
    import numpy as np
    import pandas as pd

    table = pd.DataFrame(
        {
            "feature_set": ["a", None],
            "query_ms": [0.1, np.nan],
            "n_tables": pd.array([7, None]),
            "mean_visited": [4914.0, None],  # hnswlib counts none: an object column
            "visited_fraction": pd.array([0.1557, None], dtype="Float64"),  # a nullable column: pd.NA
        }
    )
    human = formats.human_columns(table)
    assert list(human.columns) == [
        "Feature set", "In a batch (ms)", "g (tables)", "Visited / query", "Share visited (%)"
    ]  # fmt: skip
    assert human["Feature set"].tolist() == ["a", ""]
    assert human["In a batch (ms)"].tolist() == ["0.100", "–"] and human["g (tables)"].tolist() == ["7", "–"]
    assert human["Visited / query"].tolist() == ["4914.0", "–"] and human["Share visited (%)"].tolist() == ["15.6", "–"]
    full = formats.human_columns(table.dropna())  # without gaps the figures stay numbers
    assert full["Share visited (%)"].iloc[0] == pytest.approx(15.57) and full["In a batch (ms)"].dtype == np.float64
