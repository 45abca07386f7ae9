"""Section 4.1 distance analysis on hand-computed points."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.evaluation.distances import distance_table, pairwise_distance_sample


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


def test_large_sets_are_sampled_from_a_memory_map_without_copying_the_rest(tmp_path) -> None:
    rng = np.random.default_rng(0)
    data = rng.standard_normal((3000, 8)).astype(np.float16)
    np.save(tmp_path / "rows.npy", data)
    features = np.load(tmp_path / "rows.npy", mmap_mode="r")  # float16 on disk, as a large store keeps them
    labels = np.array(["a"] * 1800 + ["b"] * 900 + [None] * 300, dtype=object)
    table = distance_table(features, labels, max_samples=1000, max_class_samples=400).set_index("class")
    assert table.loc["(all)", "n_objects"] == 2700 and table.loc["(all)", "n_sampled"] == 1000
    assert table.loc["a", "n_sampled"] == 400 and table.loc["b", "n_sampled"] == 400
    # standard normal rows in 8 dimensions: the mean distance is about sqrt(2 * 8) = 4
    assert table["mean_euclidean"].between(3.6, 4.2).all()
    # rows= reads the given rows only, exactly as the copied subset would be read
    rows = np.flatnonzero(labels == "b")
    on_rows = pairwise_distance_sample(features, n_pairs=300, rows=rows)
    copied = pairwise_distance_sample(np.asarray(features[rows]), n_pairs=300)
    assert on_rows.equals(copied)
