"""Hubness figures on hand-made result lists."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.evaluation.hubness import hub_share, hubness_summary, hubs, k_occurrence, k_occurrence_skewness, top_hubs


def test_k_occurrence_counts_slots_and_ignores_padding() -> None:
    ids = np.array([[0, 1, -1], [0, 2, 1]])
    np.testing.assert_array_equal(k_occurrence(ids, 4), [2, 2, 1, 0])
    with pytest.raises(ValueError, match="only 2 objects"):
        k_occurrence(ids, 2)


def test_hub_share_is_high_when_one_object_answers_every_query() -> None:
    n_objects = 200
    rng = np.random.default_rng(0)
    spread = np.stack([rng.choice(n_objects, 10, replace=False) for _ in range(100)])
    with_hub = spread.copy()
    with_hub[:, 0] = 7  # object 7 answers every query
    with_hub[:, 1:] = np.where(with_hub[:, 1:] == 7, 8, with_hub[:, 1:])
    # 1 % of 200 objects = 2 hubs: spread answers give them about 2 % of the slots, the hub at least 10 %
    assert hub_share(spread, n_objects) < 0.05
    assert hub_share(with_hub, n_objects) >= 0.1
    assert 7 in hubs(with_hub, n_objects)
    assert k_occurrence_skewness(with_hub, n_objects) > k_occurrence_skewness(spread, n_objects)
    assert top_hubs(with_hub, n_objects, n=1)["id"].tolist() == [7]


def test_summary_out_of_domain_landing_on_hubs() -> None:
    ids = np.array([[0, 1], [0, 2], [0, 3], [0, 4]])
    photos_on_hub = np.array([[0, 5], [0, 6]])
    summary = hubness_summary(ids, 100, out_of_domain_ids=photos_on_hub)
    assert summary["hub_share"] == pytest.approx(4 / 8)
    assert summary["ood_hub_share"] == pytest.approx(2 / 4)
    assert summary["ood_distinct"] == pytest.approx(3 / 4)
