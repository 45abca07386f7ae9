"""Section 4.1 distance analysis on hand-computed points."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.analysis import distance_table, pairwise_distance_sample


def test_distance_table_hand_computed() -> None:
    features = np.array([[0, 0], [3, 4], [6, 8], [1, 0]], dtype=np.float32)
    labels = np.array(["a", "a", "a", None], dtype=object)  # the distractor is ignored
    table = distance_table(features, labels).set_index("class")
    # pairs: (0,1)=5, (0,2)=10, (1,2)=5; cosine: 0 for the zero row, 1 for (1,2)
    assert table.loc["(all)", "mean_euclidean"] == pytest.approx(20 / 3)
    assert table.loc["(all)", "mean_cosine"] == pytest.approx(1 / 3)
    assert table.loc["a", "n_objects"] == 3 and list(table.index) == ["(all)", "a"]


def test_pairwise_sample_never_pairs_a_row_with_itself() -> None:
    features = np.eye(5, dtype=np.float32)
    sample = pairwise_distance_sample(features, n_pairs=200)
    assert np.allclose(sample["euclidean"], np.sqrt(2)) and np.allclose(sample["cosine"], 0)
