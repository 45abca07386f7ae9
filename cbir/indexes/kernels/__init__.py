"""numba kernels for exact re-ranking and the E2LSH index, with pure-numpy references (:mod:`.reference`).

One module per concern: :mod:`.common`, :mod:`.hashing`, :mod:`.tables`, :mod:`.probing`, :mod:`.topk`,
:mod:`.polytope`, :mod:`.candidates`, :mod:`.query`, :mod:`.blocks`, :mod:`.grouped`, :mod:`.projection`,
:mod:`.single`; their public names are re-exported here (``kernels.lsh_search``).

Everything here takes and returns plain numpy arrays; the classes in :mod:`cbir.indexes.base` own validation and
state. The numpy ``*_reference`` functions implement the same algorithms the slow, obvious way and exist
so that tests can assert the numba kernels return the same keys, buckets, candidates and top-k answers.

Hashing (Datar et al., E2LSH; the paper's Section 3)
    ``h_i(p) = floor((p · a_i + b_i) / w)`` with ``a_i ~ N(0, I)`` and ``b_i ~ U[0, w)``. Table ``t`` uses
    the ``h`` consecutive hash functions ``t*h .. t*h + h - 1``. The matrix product ``X @ A`` for all
    ``g*h`` functions is done once with BLAS (float32); the affine shift, division and floor are done in
    float64 so that the same projection always lands in the same slot.

Bucket keys
    The ``h`` integer codes of a table are folded into one 64-bit key with the splitmix64 finaliser
    (``key = mix(key XOR code)`` per code). Each step is a bijection of the running state, so two tuples
    collide only by a chance 64-bit coincidence (~``n_buckets² / 2**65`` per table: about 1e-10 for a
    million buckets). A collision can only *add* candidates to a query (they are re-ranked exactly), never
    lose one, so it costs a little time, not correctness.

Bucket layout (CSR, per table)
    ``table_offsets`` (g+1,) slices ``bucket_keys`` (sorted unique keys of each table) and
    ``bucket_starts`` (n_buckets+1,) slices ``bucket_ids`` (g*n,): the ids of one bucket, ascending.

Candidate phase
    The ids of the probed buckets are deduplicated with a per-worker bitmap (n/64 words) and read back in
    ascending id order (sorted when few, off the bitmap when many), so rows are fetched in memory order.
    Optionally (``ProbeArgs.min_collisions = c > 1``) only ids found in at least c probed buckets are kept
    (collision counting). Optionally (:class:`Shortlist`) every candidate is first scored in a small space
    (PCA coordinates) and only the best ``size`` are ranked exactly, best first, stopping early when the small
    space gives a lower bound that no remaining candidate can beat.

Cross-polytope LSH (FALCONN; :mod:`cbir.indexes.polytope`)
    Hashes are the nearest cross-polytope vertices of pseudo-random rotations (see the section's comment); their
    codes are folded into the same keys and tables, and the query's probing sequence, computed outside the search
    kernel, is passed to it as (table, key) pairs (:class:`ListedProbes`).
Bucket-ordered codes (:mod:`.blocks`; :mod:`cbir.indexes.blocks`)
    Beside ``bucket_ids``, (g*n, s) uint8 codes in the same order: a probed bucket is one contiguous block of codes,
    scored in a loop the compiler vectorises, the best R re-ranked exactly (no gather of an id and then a code);
    a batch re-ranks grouped by row (:mod:`.grouped`), each shortlisted row read once for all its queries; a query
    is projected in one numba call (:mod:`.projection`), and one query's whole search is one numba call
    (:mod:`.single`: projection, rotations, probing sequence, blocks and re-rank).

Multi-probe (Lv et al., VLDB 2007, query-directed probing)
    For slot coordinate ``j`` with fractional position ``f_j`` inside its slot, moving to the left
    neighbour costs ``(f_j*w)²`` and to the right one ``((1-f_j)*w)²``. Perturbation sets are generated
    in increasing total cost with the min-heap *shift/expand* method over the ``2h`` sorted single
    perturbations; sets that move one coordinate both ways are skipped.
"""

from cbir.indexes.kernels.blocks import block_codes, block_search
from cbir.indexes.kernels.candidates import _sorted_candidates
from cbir.indexes.kernels.common import METRIC_CODES, METRIC_COSINE, METRIC_EUCLIDEAN, BucketTables
from cbir.indexes.kernels.hashing import draw_hash_functions, hash_keys, slot_positions
from cbir.indexes.kernels.polytope import (
    cross_polytope_codes,
    cross_polytope_probes,
    draw_rotation_signs,
    fold_keys,
    rotate,
    rotation_matrix,
)
from cbir.indexes.kernels.probing import ProbeWorkspace, _probe_workspace, max_heap_nodes, perturbation_sequence
from cbir.indexes.kernels.projection import query_spaces
from cbir.indexes.kernels.query import (
    ListedProbes,
    ProbeArgs,
    Shortlist,
    lsh_candidates,
    lsh_search,
)
from cbir.indexes.kernels.reference import (
    block_search_reference,
    build_tables_reference,
    cross_polytope_codes_reference,
    cross_polytope_probes_reference,
    hash_keys_reference,
    merge_tables_reference,
    perturbation_sequence_reference,
    query_reference,
    query_spaces_reference,
    rotations_reference,
    sign_sketches_reference,
    table_keys_reference,
)
from cbir.indexes.kernels.sketch import sign_sketches
from cbir.indexes.kernels.tables import build_tables, build_tables_in_steps, merge_tables
from cbir.indexes.kernels.topk import _squared_l2, rerank_candidates

__all__ = [
    "METRIC_CODES",
    "METRIC_COSINE",
    "METRIC_EUCLIDEAN",
    "BucketTables",
    "ListedProbes",
    "ProbeArgs",
    "ProbeWorkspace",
    "Shortlist",
    "_probe_workspace",
    "_sorted_candidates",
    "_squared_l2",
    "block_codes",
    "block_search",
    "block_search_reference",
    "build_tables",
    "build_tables_in_steps",
    "build_tables_reference",
    "cross_polytope_codes",
    "cross_polytope_codes_reference",
    "cross_polytope_probes",
    "cross_polytope_probes_reference",
    "draw_hash_functions",
    "draw_rotation_signs",
    "fold_keys",
    "hash_keys",
    "hash_keys_reference",
    "lsh_candidates",
    "lsh_search",
    "max_heap_nodes",
    "merge_tables",
    "merge_tables_reference",
    "perturbation_sequence",
    "perturbation_sequence_reference",
    "query_reference",
    "query_spaces",
    "query_spaces_reference",
    "rerank_candidates",
    "rotate",
    "rotation_matrix",
    "rotations_reference",
    "sign_sketches",
    "sign_sketches_reference",
    "slot_positions",
    "table_keys_reference",
]
