"""Cross-polytope LSH whose buckets hold their members' compact codes contiguously (issue 20).

:class:`BlockPolytopeIndex` hashes and probes as :class:`cbir.indexes.polytope.CrossPolytopeIndex` on ``reduce_dim``
PCA coordinates, but each table keeps, beside the member ids of a bucket, the members' uint8 codes of ``score_dim``
principal axes (:class:`cbir.indexes.pca.Codebook`) in the same order (:func:`cbir.indexes.kernels.blocks.block_codes`).
A probe then scores one contiguous block of codes in a tight loop instead of gathering each candidate's id and then
its code; the best ``rerank`` go to the exact re-rank. Memory: the tables' ids (8 bytes per member per table) plus
``score_dim`` bytes per member per table, plus the codes once more in id order (to grow the index): at 8 tables of
128-byte codes, 1,216 bytes per object plus 16 per bucket (about 1.25 GB at a million objects) beside the float32
features.
With ``code="sign"`` the buckets hold 1-bit sign sketches of the same axes instead (16 bytes at 128 axes, scored by
popcount, :mod:`cbir.indexes.kernels.sketch`): 320 bytes per object at 8 tables, but ranked so much coarser that the
shortlist must grow ~7× for the same recall, which costs more than the smaller blocks save (README, issue 20).

One query is one numba call (:func:`cbir.indexes.kernels.single.one_block_query`): the projection onto the scoring
axes (whose leading axes are the hashing space), the rotations, the probing sequence and the blocks — what a search
engine answering one query at a time pays, with no Python-level step (each costs microseconds on cold caches).

With ``target_recall`` the probes and the shortlist are chosen at fit (:meth:`BlockPolytopeIndex._tune`): the
cheapest setting by :meth:`BlockPolytopeIndex.estimated_cost` whose recall on indexed rows searched as queries
(:mod:`cbir.indexes.holdout`) reaches the target — a rule, not a setting tuned by hand per data set. With
``choose_bits`` too the bits per table: the tables are hashed again for each of log2(n) − 2, − 3, − 4 bits (the PCA
and the pseudo-queries shared), each tuned, and the cheapest kept — fewer bits mean larger buckets and fewer probes,
which a batch pays less for. Above ``_BIT_SAMPLE`` rows (32,768) the candidates are compared on a sample of that
size and its choice carried to n as the same offset from log2 (buckets of the same expected size): the full rows are
hashed once, and only T and R are chosen on them (README, issue 20).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from cbir.core.metrics import recall_at_k
from cbir.indexes import kernels, threads
from cbir.indexes.base import SearchResult, check_int
from cbir.indexes.holdout import PseudoQueries, check_target_recall, pseudo_queries, without_self
from cbir.indexes.kernels.blocks import block_codes, block_search
from cbir.indexes.kernels.projection import query_spaces
from cbir.indexes.kernels.single import one_block_query
from cbir.indexes.kernels.sketch import sign_sketches
from cbir.indexes.polytope import CrossPolytopeIndex, bits_for, hashes_for_bits

_NO_ROTATION = np.zeros((0, 0), dtype=np.float32)  # one_block_query's "apply the fast transforms"


class BlockPolytopeIndex(CrossPolytopeIndex):
    """Cross-polytope LSH with bucket-ordered uint8 codes (see the module docstring).

    Args:
        args, options: :class:`cbir.indexes.polytope.CrossPolytopeIndex`'s other arguments, passed on as is
            (``n_tables``, ``n_projections``, ``last_dim`` by position or name; ``metric``, ``seed``, ``probes``,
            ``n_rotations`` by name; ``min_collisions`` only 1).
        reduce_dim: r principal axes hashed (required).
        rerank: R >= 1 members, best by code distance, ranked exactly.
        score_dim: s principal axes of the uint8 codes kept in the buckets.
        stamp: skip a member met in an earlier probed bucket of the same query (a query-stamped int32 per object)
            instead of scoring it again (the default: cheaper when buckets are small; a member enters the shortlist
            once either way).
        patience: 0, or P: stop probing a query after P probes in a row (best first over all tables) that changed
            nothing in its full shortlist (an adaptive stop: easy queries probe less; ``probes`` bounds the sequence).
        target_recall: None (search with ``probes`` and ``rerank``), or a recall@10 in (0, 1]: at fit, choose the
            probes T <= ``max_probes`` and the shortlist R of the cheapest setting whose recall@10 reaches it on
            indexed rows used as queries (:mod:`cbir.indexes.holdout`; cost: :meth:`estimated_cost`), learned as
            ``probes_`` and ``rerank_`` (the constructor's ``probes`` and ``rerank`` stay as given).
        max_probes: the largest T ``target_recall`` may choose.
        choose_bits: with ``target_recall``, also choose the bits per table at fit (:meth:`bit_candidates` of the
            rows' count; the cheapest by :meth:`estimated_cost`; above ``_BIT_SAMPLE`` rows chosen on a sample and
            carried to n, ``bits_sample_``), replacing ``n_projections`` and ``last_dim`` (which stay the setting
            without ``choose_bits``).
        code: the shortlist code kept in the buckets: "uint8" (``score_dim`` bytes, squared L2 in code units) or
            "sign" (1-bit sign sketches of the same axes in ⌈s/64⌉ uint64 words, Hamming distance by popcount,
            :mod:`cbir.indexes.kernels.sketch`; ``target_recall`` may then choose longer shortlists, up to 400).
    """

    # The saved state is CrossPolytopeIndex's (the blocks are derived from its tables and codes at fit and load), so
    # the artifact kind is too: the registry's "cross_polytope" kind and the results tables name this index.
    kind: ClassVar[str] = "cross_polytope_index"
    serial_single_query: ClassVar[bool] = True  # one query: one serial numba call (_search_one)
    # target_recall's grid: the probes and shortlists tried, the pseudo-queries (a recall@10 to about +-0.01)
    _TUNE_PROBES: ClassVar[tuple[int, ...]] = (0, 1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 96, 128)
    _TUNE_RERANK: ClassVar[tuple[int, ...]] = (10, 12, 15, 20, 25, 30, 40, 50, 70, 100)
    _TUNE_SAMPLE: ClassVar[int] = 500
    # standard errors of the mean recall by which a chosen setting's leave-one-out recall must clear the target: with
    # one, a 1M hard synthetic set's held-out recall landed at 0.896 for a target of 0.9 (README, issue 20)
    _TUNE_MARGIN: ClassVar[float] = 2.0
    _TUNE_K: ClassVar[int] = 10
    # choose_bits' candidates: log2(n) less these, at least _MIN_BITS (buckets of about 4, 8 and 16 objects)
    _BIT_OFFSETS: ClassVar[tuple[int, ...]] = (2, 3, 4)
    _MIN_BITS: ClassVar[int] = 4
    # above this many rows the bits are chosen on a sample of this size and carried to n as the same offset from
    # log2 (buckets of the same expected size): the full data is hashed once (README, issue 20: at 1M each extra
    # candidate would cost ~10 s of hashing and layout)
    _BIT_SAMPLE: ClassVar[int] = 1 << 15
    _CODES: ClassVar[tuple[str, ...]] = ("uint8", "sign")
    # estimated_cost's model, microseconds of one thread: a probed bucket (the probing sequence and its bucket lookup),
    # a scored code per byte, an exact re-rank row per float — least squares over one-thread batch CPU times of
    # b8/b9/b10 x T 2/4/8/16 x R 10/25/50 on the default collection (R^2 0.93, plus ~23 us a query fixed, which ranks
    # nothing; README, issue 20: "bits chosen by the rule")
    _COST_PROBE: ClassVar[float] = 0.354
    _COST_CODE_BYTE: ClassVar[float] = 0.0189 / 128
    _COST_ROW_FLOAT: ClassVar[float] = 0.655 / 1280

    def __init__(
        self,
        *args: Any,
        reduce_dim: int = 48,
        rerank: int = 30,
        score_dim: int = 128,
        stamp: bool = False,
        patience: int = 0,
        target_recall: float | None = None,
        max_probes: int = 64,
        choose_bits: bool = False,
        code: str = "uint8",
        **options: Any,
    ) -> None:
        # the rest of the signature is CrossPolytopeIndex's (n_tables, n_projections, last_dim, metric, seed, probes,
        # n_rotations), passed on as is: one definition of its defaults and checks
        if reduce_dim is None or score_dim is None or not rerank:
            raise ValueError("BlockPolytopeIndex needs reduce_dim, rerank >= 1 and score_dim")
        if options.get("min_collisions", 1) != 1:
            raise ValueError("BlockPolytopeIndex scores every member it meets: min_collisions must be 1")
        super().__init__(*args, reduce_dim=reduce_dim, rerank=rerank, score_dim=score_dim, **options)
        if not isinstance(stamp, bool | np.bool_):
            raise ValueError(f"stamp must be a bool, got {stamp!r}")
        self.stamp = bool(stamp)
        self.patience = check_int(patience, "patience", 0)
        self.target_recall = check_target_recall(target_recall)
        self.max_probes = check_int(max_probes, "max_probes", 0)
        if not isinstance(choose_bits, bool | np.bool_):
            raise ValueError(f"choose_bits must be a bool, got {choose_bits!r}")
        if choose_bits and self.target_recall is None:
            raise ValueError("choose_bits needs a target_recall")
        self.choose_bits = bool(choose_bits)
        if code not in self._CODES:
            raise ValueError(f"code must be one of {self._CODES}, got {code!r}")
        self.code = code
        if code == "sign":  # sketches rank coarser: longer shortlists on the grid (an instance attribute)
            self._TUNE_RERANK = (*BlockPolytopeIndex._TUNE_RERANK, 150, 200, 300, 400)
        # learned at fit with target_recall (scikit-learn's trailing underscore)
        self.probes_: int | None = None
        self.rerank_: int | None = None
        self.tuned_recall_: float | None = None
        # the settings target_recall tried (at the chosen bits): T, R, recall, its standard error, codes scored, cost
        self.tuning_: list[tuple[int, int, float, float, float, float]] = []
        # with choose_bits, each candidate's bits and its best setting: (bits, T, R, recall, estimated cost, whether
        # it reached the target with the margin)
        self.bits_tried_: list[tuple[int, int, int, float, float, bool]] = []
        # with choose_bits on more than _BIT_SAMPLE rows: (the sample's rows, the bits chosen on it); bits_tried_ are
        # then the sample's candidates
        self.bits_sample_: tuple[int, int] | None = None
        self._blocks: np.ndarray | None = None  # (g*n, s) uint8 codes in bucket order
        # the query's one projection onto max(r, s) axes: (d, w) columns for a batch's BLAS product, (w, d) rows for one
        # query's numba kernel (cbir.indexes.kernels.projection), and the data's mean they are centred on
        self._axes: tuple[np.ndarray, np.ndarray] | None = None
        self._axes_mean: np.ndarray | None = None

    @property
    def params(self) -> dict[str, Any]:
        params = super().params
        if self.stamp:
            params["stamp"] = True
        if self.patience:
            params["patience"] = self.patience
        if self.target_recall is not None:
            params.update(target_recall=self.target_recall, max_probes=self.max_probes)
        if self.choose_bits:
            params["choose_bits"] = True
        if self.code != "uint8":
            params["code"] = self.code
        return params

    @property
    def search_probes(self) -> int:
        """The probes T a search uses: those learned at fit (``probes_``, with ``target_recall``), else ``probes``."""
        return self.probes if self.probes_ is None else self.probes_

    @property
    def search_rerank(self) -> int:
        """The shortlist R a search uses: ``rerank_`` learned at fit (with ``target_recall``), else ``rerank``."""
        return self.rerank if self.rerank_ is None else self.rerank_

    @property
    def fitted_params(self) -> dict[str, Any]:
        """With ``target_recall``, the probes and shortlist chosen at fit, with ``choose_bits`` the hashes too
        (``n_projections``, ``last_dim``: a results row's bits); empty otherwise."""
        if self.probes_ is None:
            return {}
        hashes = {"n_projections": self.n_projections, "last_dim": self.last_dim} if self.choose_bits else {}
        return {"probes": self.probes_, "rerank": self.rerank_, **hashes}

    @property
    def setting(self) -> str:
        """The probes and shortlist searched with, e.g. "T8 R30", or "T8 R25 chosen for recall@10 0.9", led by the
        bits per table with ``choose_bits`` ("b8 T3 R25 chosen for recall@10 0.9")."""
        chosen = "" if self.probes_ is None else f" chosen for recall@10 {self.target_recall:g}"
        bits = f"b{self.bits} " if self.choose_bits else ""
        return f"{bits}T{self.search_probes} R{self.search_rerank}{chosen}"

    @property
    def bits(self) -> int:
        """The bits per table of the hashes (chosen at fit with ``choose_bits``)."""
        assert self.reduce_dim is not None
        return bits_for(self.reduce_dim, self.n_projections, self.last_dim)

    @classmethod
    def bit_candidates(cls, n: int) -> list[int]:
        """``choose_bits``' bits per table for ``n`` rows, most first: round(log2 n) less ``_BIT_OFFSETS``."""
        top = round(np.log2(max(n, 2)))
        return sorted({max(cls._MIN_BITS, top - offset) for offset in cls._BIT_OFFSETS}, reverse=True)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["setting"] = self.setting
        if self._blocks is not None:
            info["block_bytes"] = int(self._blocks.nbytes)
            info["bytes_per_object"] = (info["table_bytes"] + self._blocks.nbytes + self._reduced.nbytes) / max(
                self.n_objects, 1
            )
        if self.tuned_recall_ is not None:
            info.update(tuned_probes=self.probes_, tuned_rerank=self.rerank_, tuned_recall=self.tuned_recall_)
        return info

    def _lay_out_blocks(self) -> None:
        assert self._reduced is not None and self._tables is not None  # called inside fit: not "fitted" yet
        assert self._pca is not None and self._score_pca is not None
        codes = self._reduced
        if self.code == "sign":  # the signs of the centred coordinates: code units above the centre
            codes = sign_sketches(self._reduced, self._zero())
        self._blocks = block_codes(self._tables, codes)
        wide = self._score_pca if self._score_pca.components.shape[1] >= self._pca.components.shape[1] else self._pca
        self._axes = (wide.components, np.ascontiguousarray(wide.components.T))
        self._axes_mean = np.ascontiguousarray(wide.mean, dtype=np.float32)

    def _set_bits(self, bits: int) -> None:
        assert self.reduce_dim is not None
        self.n_projections, self.last_dim = hashes_for_bits(self.reduce_dim, bits)

    def _bits_on_sample(self, data: np.ndarray) -> int:
        """``choose_bits`` on more than ``_BIT_SAMPLE`` rows: the bits an index with the same parameters chooses on
        a sample of ``_BIT_SAMPLE`` rows (drawn with ``seed``; its own PCA, candidates and pseudo-queries), as an
        offset from round(log2) of the sample's size, carried to round(log2 n). Sets ``bits_sample_`` and
        ``bits_tried_`` (the sample's candidates)."""
        size = self._BIT_SAMPLE
        rows = np.sort(np.random.default_rng(self.seed).choice(len(data), size, replace=False))
        probe = type(self)(**self.params).fit(data[rows])
        self.bits_sample_, self.bits_tried_ = (size, probe.bits), probe.bits_tried_
        offset = round(np.log2(size)) - probe.bits
        return max(self._MIN_BITS, round(np.log2(len(data))) - offset)

    def _zero(self) -> np.ndarray:
        """The centre (0 of the centred coordinates) in code units (s,) float32: a sketch's bit is set above it."""
        assert self._codebook is not None
        return np.ascontiguousarray(-self._codebook.low / np.float32(self._codebook.step), dtype=np.float32)

    def _fit(self, data: np.ndarray) -> None:
        self.bits_sample_, self.bits_tried_ = None, []
        if self.choose_bits:  # hash the full data at the first candidate, or at the bits chosen on a sample
            large = len(data) > self._BIT_SAMPLE
            self._set_bits(self._bits_on_sample(data) if large else self.bit_candidates(len(data))[0])
        super()._fit(data)
        self._lay_out_blocks()
        self.probes_, self.rerank_, self.tuned_recall_ = None, None, None

    def fit(self, X: np.ndarray, progress: Callable[[str, int, int], None] | None = None) -> BlockPolytopeIndex:
        """Index the rows of ``X`` (see :meth:`BaseIndex.fit`); with ``target_recall``, choose T and R too (and the
        bits per table with ``choose_bits``)."""
        super().fit(X, progress)
        if self.target_recall is not None:
            assert self._data is not None
            self._choose(self._data)
        return self

    def estimated_cost(self, probes: int, rerank: int, scored: float) -> float:
        """The model ``target_recall`` ranks settings by: microseconds of one query on one thread that probes
        L·(1 + ``probes``) buckets, scores ``scored`` codes and re-ranks ``rerank`` rows exactly."""
        assert self._blocks is not None and self._data is not None
        return (
            self._COST_PROBE * self.n_tables * (1 + probes)
            + self._COST_CODE_BYTE * self._blocks.shape[1] * self._blocks.itemsize * scored
            + self._COST_ROW_FLOAT * self._data.shape[1] * rerank
        )

    def _choose(self, data: np.ndarray) -> None:
        """Set ``probes_``, ``rerank_`` (:meth:`_tune`) and with ``choose_bits`` (unless chosen on a sample at
        :meth:`_fit`) the bits per table: the tables are hashed again for each of :meth:`bit_candidates` after the
        first (most bits first, on the fitted PCA, the same pseudo-queries), and the cheapest candidate reaching the
        target kept (the most recall when none does). Each candidate is tuned only below the best cost found so far
        (its walk stops there). Every candidate is tried: on the grid of T and R the cost is not unimodal in the bits
        (ImageNet 4,913: b10 69.6 µs, b9 more, b8 62.6; README, issue 20)."""
        k = min(self._TUNE_K, len(data) - 1)
        self.tuning_ = []
        if k < 1:
            self.probes_, self.rerank_, self.tuned_recall_ = self.probes, self.rerank, 1.0
            return
        sample = pseudo_queries(data, self.metric, self.seed, self._TUNE_SAMPLE, k)
        if not self.choose_bits or self.bits_sample_ is not None:  # the bits given, or chosen on a sample (_fit)
            self._keep(self._tune(sample, k, None))
            return
        hashed = self._hash_space(data)
        kept: tuple[tuple[bool, float], dict[str, Any]] | None = None
        for bits in self.bit_candidates(len(data)):
            if bits != self.bits or self.bits_tried_:  # the first candidate is hashed at fit (_fit)
                self._set_bits(bits)
                self._hash_into_tables(hashed, hashed.shape[1], in_hash_space=True)
                self._lay_out_blocks()
            row = self._tune(sample, k, None if kept is None or not kept[0][0] else -kept[0][1])
            reached = row[2] - self._TUNE_MARGIN * row[3] >= (self.target_recall or 0.0)
            self.bits_tried_.append((bits, row[0], row[1], row[2], row[5], reached))
            rank = (reached, -row[5] if reached else row[2])
            if kept is None or rank > kept[0]:  # cheaper, or (none reaching the target) more recall
                kept = (rank, self._hashing_state(row))
        assert kept is not None
        for name, value in kept[1].items():
            setattr(self, name, value)

    def _hashing_state(self, row: tuple[int, int, float, float, float, float]) -> dict[str, Any]:
        """The attributes a bit candidate sets (:meth:`_choose`), with its chosen setting ``row``'s T, R, recall."""
        names = ("n_projections", "last_dim", "_signs", "_rotation", "_tables", "_blocks", "tuning_")
        state = {name: getattr(self, name) for name in names}
        return {**state, "probes_": row[0], "rerank_": row[1], "tuned_recall_": row[2]}

    def _keep(self, row: tuple[int, int, float, float, float, float]) -> None:
        self.probes_, self.rerank_, self.tuned_recall_ = row[:3]

    def _tune(self, sample: PseudoQueries, k: int, bound: float | None) -> tuple[int, int, float, float, float, float]:
        """The cheapest (:meth:`estimated_cost`) grid setting (T, R, recall, its standard error, codes scored, cost)
        whose leave-one-out recall@10, less two standard errors of its mean over the pseudo-queries
        (``_TUNE_MARGIN``), reaches ``target_recall`` at a cost below ``bound`` (None: any); else the most recall
        found. Sets ``tuning_`` to each setting tried.

        A staircase walk: R from the longest shortlist down, and for each the fewest T reaching the target, which
        only grows as R shrinks — so T steps up from the previous R's, and stops once the setting costs more than
        the best found (codes scored do not depend on R)."""
        assert self.target_recall is not None
        self.tuning_ = []
        grid = [t for t in self._TUNE_PROBES if t <= self.max_probes] or [self.max_probes]
        scored: dict[int, float] = {}  # codes scored a query at T (the most probes tried below T: a lower bound)
        step, best = 0, None
        for rerank in sorted({max(r, k) for r in self._TUNE_RERANK}, reverse=True):
            while True:
                known = max((t for t in scored if t <= grid[step]), default=None)
                floor = self.estimated_cost(grid[step], rerank, 0.0 if known is None else scored[known])
                limit = bound if best is None else best[5]
                if limit is not None and floor >= limit and self.tuning_:
                    break  # this R needs a dearer setting than the best found
                recall, error, codes = self._holdout_recall(sample, k, grid[step], rerank)
                scored[grid[step]] = codes
                row = (grid[step], rerank, recall, error, codes, self.estimated_cost(grid[step], rerank, codes))
                self.tuning_.append(row)
                if recall - self._TUNE_MARGIN * error >= self.target_recall:
                    best = row if best is None or row[5] < best[5] else best
                    break
                if step + 1 == len(grid):
                    break
                step += 1
        # out of the grid's reach (or of the bound's): the most recall found
        return best or max(self.tuning_, key=lambda r: r[2])

    def _holdout_recall(self, sample: PseudoQueries, k: int, probes: int, rerank: int) -> tuple[float, float, float]:
        """Recall@k of the pseudo-queries ``sample`` (own rows ignored) searched with T = ``probes`` and
        R = ``rerank`` (+1: a query's own row takes a shortlist place), its standard error, the mean codes scored."""
        self.probes_, self.rerank_ = probes, rerank + 1
        found = self._search(sample.queries, k + 1)
        recalls = recall_at_k(without_self(found.ids, sample.rows, k), sample.exact, k)
        error = float(recalls.std() / np.sqrt(len(recalls)))
        return float(recalls.mean()), error, float(found.visited.mean())

    def _add(self, rows: np.ndarray) -> None:
        """Hash the new rows with the fitted rotations (and PCA), merge them into the buckets, lay the codes out."""
        hashed = self._hash_space(rows)
        keys = kernels.fold_keys(self._codes(hashed, in_hash_space=True), self.n_tables, self.n_projections)
        self._tables = kernels.merge_tables(self.tables, keys, self.n_objects)
        self._extend_reduced(rows, hashed)
        self._lay_out_blocks()

    def _spaces(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The queries in the hashing space (m, r) and in code units (m, s), from one projection onto the wider axes
        (one query: one numba call, :func:`cbir.indexes.kernels.projection.query_spaces`)."""
        assert self._pca is not None and self._axes is not None and self._axes_mean is not None
        assert self._codebook is not None
        low, step = self._codebook.low, self._codebook.step
        return query_spaces(queries, self._axes, self._axes_mean, self._pca.components.shape[1], low, step)

    def _search_one(self, query: np.ndarray, k: int) -> SearchResult:
        """One query (1, d) in one numba call (:func:`cbir.indexes.kernels.single.one_block_query`): the same steps
        as a batch's, without a Python-level step between them."""
        assert self._pca is not None and self._axes is not None and self._axes_mean is not None
        assert self._codebook is not None and self._signs is not None and self._blocks is not None
        return SearchResult(
            *one_block_query(
                query=query,
                mean=self._axes_mean,
                rows=self._axes[1],
                hashed_dim=self._pca.components.shape[1],
                low=self._codebook.low,
                inverse_step=np.float32(1.0 / self._codebook.step),
                zero=self._zero(),
                rotation=_NO_ROTATION if self._rotation is None else self._rotation,
                signs=self._signs,
                n_tables=self.n_tables,
                n_projections=self.n_projections,
                last_dim=self._last_dim(),
                n_probes=self.n_tables * (1 + self.search_probes),
                data=self._data,
                codes=self._blocks,
                tables=self.tables,
                k=k,
                rerank=self.search_rerank,
                stamp=self.stamp,
                patience=self.patience,
                metric=kernels.METRIC_CODES[self.metric],
            )
        )

    def _search(self, queries: np.ndarray, k: int) -> SearchResult:
        if len(queries) == 1:
            return self._search_one(queries, k)
        # the two projections on one BLAS thread, also in a batch: products this small (m x 1280 x 128, then
        # m x 48 x 1024) gain little from a second thread, and OpenBLAS' workers, spinning after the call, slow the
        # numba kernels that follow (measured: 8x slower projections on two shared cores; README, issue 20); one query
        # is on one thread already (BaseIndex.search)
        with threads.single_query() if len(queries) > 1 else contextlib.nullcontext():
            hashed, units = self._spaces(queries)
            rotated = self._rotated(hashed)
        probe_tables, probe_keys, _ = kernels.cross_polytope_probes(
            rotated,
            self.n_tables,
            self.n_projections,
            self._last_dim(),
            self.n_tables * (1 + self.search_probes),
        )
        assert self._data is not None and self._blocks is not None
        if self.code == "sign":
            units = sign_sketches(units, self._zero())
        return SearchResult(
            *block_search(
                queries=queries,
                data=self._data,
                units=units,
                codes=self._blocks,
                tables=self.tables,
                probe_tables=probe_tables,
                probe_keys=probe_keys,
                k=k,
                rerank=self.search_rerank,
                metric=kernels.METRIC_CODES[self.metric],
                stamp=self.stamp,
                patience=self.patience,
            )
        )

    def _state(self) -> dict[str, Any]:
        state = super()._state()
        if self.tuned_recall_ is not None:
            state.update(tuned_probes=self.probes_, tuned_rerank=self.rerank_, tuned_recall=self.tuned_recall_)
        return state

    def _restore(self, state: Mapping[str, Any]) -> None:
        super()._restore(state)
        self._lay_out_blocks()  # derived from the tables and the codes: not stored
        if state.get("tuned_recall") is not None:
            self.probes_, self.rerank_ = int(state["tuned_probes"]), int(state["tuned_rerank"])
            self.tuned_recall_ = float(state["tuned_recall"])
