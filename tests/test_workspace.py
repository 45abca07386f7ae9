"""cbir.features.workspace: what is built (collection status, feature sets and their labels, saved indexes) and the
home page's build, plus the path-keyed entry points the app caches."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from builders import BACKBONE, install_feature_set, save_feature_set, synthetic_feature_set

from cbir.app import plots
from cbir.core import config
from cbir.evaluation import tuning
from cbir.features import workspace
from cbir.indexes.registry import DEFAULT_TABLES
from cbir.indexes.scan import SequentialScan
from cbir.service import search


def test_feature_set_labels() -> None:
    assert (
        workspace.feature_set_label(
            {"backbone": "resnet50", "weights": "resnet50_weights_tf_dim_ordering_tf_kernels_notop-1234567890"}
        )
        == "resnet50 · ImageNet"
    )
    assert (
        workspace.feature_set_label({"backbone": "resnet50v2", "weights_id": "model2-pool-0123456789"})
        == "resnet50v2 · fine-tuned model2-pool"
    )
    assert workspace.pick_feature_set({}, None) is None
    assert workspace.pick_feature_set({"a": "1", "b": "2"}, "b") == ("b", "2")
    assert workspace.pick_feature_set({"a": "1", "b": "2"}, "gone") == ("a", "1")


def test_build_default_without_openclipart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setenv("CBIR_OPENCLIPART_DIR", str(tmp_path / "not-installed"))
    status = workspace.collection_status(tmp_path / "empty")
    assert status.catalog is None and not status.ready and not status.openclipart_installed
    assert "not found" in (status.error or "")
    with pytest.raises(workspace.WorkspaceError, match="apt-get install openclipart-png"):
        workspace.build_default(tmp_path / "empty")


@pytest.mark.integration
def test_collection_status_of_a_real_collection(openclipart_small: Path, small_features_file: Path) -> None:
    empty = workspace.collection_status(openclipart_small)
    assert empty.catalog is not None and not empty.ready and empty.feature_sets.empty
    install_feature_set(small_features_file, openclipart_small)
    status = workspace.collection_status(openclipart_small)
    assert status.ready
    counts = status.counts()
    assert {"index", "query", "distractor", "total"} <= set(counts.columns)
    assert counts["total"].sum() == len(status.catalog.images)
    long = status.counts_long()
    assert long["images"].sum() == len(status.catalog.images)
    assert len(plots.fig_collection_counts(long).data) == 3
    choices = workspace.complete_feature_sets(openclipart_small)
    assert list(choices) == [f"{BACKBONE} · ImageNet"]


def test_path_keyed_helpers_and_small_pieces(tmp_path: Path) -> None:
    feature_set = synthetic_feature_set()
    path = save_feature_set(feature_set, tmp_path / "synthetic.joblib")
    version = workspace.file_version(path)
    assert version > 0 and workspace.file_version(tmp_path / "missing") == 0
    engine = search.search_engine_for(path, version)  # no model needed to search with stored vectors
    assert engine.query_vector(feature_set.features[7]).results.iloc[0]["id"] == 7
    defaults = tuning.lsh_defaults_for(path, version, "cosine")
    assert defaults.kind == "lsh" and defaults.metric == "cosine" and defaults.n_tables == DEFAULT_TABLES
    assert tuning.nearest([1, 2, 4, 7, 10], 8) == 7
    figure = plots.fig_per_class(
        pd.DataFrame({"class": ["a"], "n_queries": [3], "map": [0.5]}),
        pd.DataFrame({"class": ["a"], "n_queries": [3], "map": [0.7]}),
    )
    assert {trace.name for trace in figure.data} == {"current setting", "exact scan"}
    assert workspace.list_indexes().empty
    SequentialScan().fit(feature_set.features).save(config.artifacts_dir() / "indexes" / "scan.joblib")
    assert workspace.list_indexes()["index"].tolist() == ["scan.joblib"]
