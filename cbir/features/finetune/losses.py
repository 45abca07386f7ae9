"""Metric-learning losses of the retrieval head, written with TensorFlow ops (differentiable, graph-compilable).

* :func:`supcon_loss` — supervised contrastive (Khosla et al. 2020, the "L_out" form): every other example of the
  anchor's class is a positive, every other example of the batch is in the denominator;
* :func:`proxy_anchor_loss` — proxy-anchor (Kim et al. 2020): one learned proxy per class, each proxy pulls its
  class's batch examples in and pushes the others out, with a scale ``alpha`` and a margin;
* :func:`softmax_ce_loss` — sparse softmax cross-entropy of the logits (the paper's kind of head, as a baseline).

All take ``labels`` as (B,) integer class indices; the embeddings are (B, d) float32, L2-normalised by the head (the
losses normalise again, so unnormalised input is also correct). The tests check them against a NumPy reference.
"""

from __future__ import annotations

from typing import Any

LOSSES = ("supcon", "proxy_anchor", "ce")
DEFAULT_TEMPERATURE = 0.1  # SupCon: sharper than the paper's 0.07 default is unstable on small heads; 0.1 works
DEFAULT_ALPHA = 32.0  # proxy-anchor scale and margin: the paper's defaults
DEFAULT_MARGIN = 0.1


def supcon_loss(embeddings: Any, labels: Any, temperature: float = DEFAULT_TEMPERATURE) -> Any:
    """Supervised contrastive loss: mean over anchors having a positive of ``-mean_p log softmax_{a≠i}(s_ia/τ)[p]``.

    ``embeddings``: (B, d) float32; ``labels``: (B,) int. Returns a scalar float32 tensor (0 when no anchor has a
    positive in the batch).
    """
    import tensorflow as tf

    z = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=1)
    labels = tf.reshape(labels, [-1])
    n = tf.shape(z)[0]
    logits = tf.matmul(z, z, transpose_b=True) / temperature
    not_self = 1.0 - tf.eye(n)
    # log-softmax over a ≠ i: mask the diagonal out of the normaliser with a large negative value
    masked = logits - 1e9 * tf.eye(n)
    log_prob = logits - tf.reduce_logsumexp(masked, axis=1, keepdims=True)
    positives = tf.cast(tf.equal(labels[:, None], labels[None, :]), tf.float32) * not_self
    n_pos = tf.reduce_sum(positives, axis=1)
    per_anchor = -tf.reduce_sum(positives * log_prob, axis=1) / tf.maximum(n_pos, 1.0)
    has_pos = tf.cast(n_pos > 0, tf.float32)
    return tf.reduce_sum(per_anchor * has_pos) / tf.maximum(tf.reduce_sum(has_pos), 1.0)


def proxy_anchor_loss(
    embeddings: Any, labels: Any, proxies: Any, alpha: float = DEFAULT_ALPHA, margin: float = DEFAULT_MARGIN
) -> Any:
    """Proxy-anchor loss of (B, d) ``embeddings`` with (B,) int ``labels`` against (C, d) ``proxies``.

    ``(1/|P+|) Σ_{p∈P+} log(1 + Σ_{x∈X_p+} e^{-α(s(x,p)-δ)}) + (1/C) Σ_p log(1 + Σ_{x∈X_p-} e^{α(s(x,p)+δ)})``
    with ``s`` the cosine similarity and ``P+`` the proxies of the classes present in the batch. Scalar float32.
    """
    import tensorflow as tf

    z = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=1)
    p = tf.math.l2_normalize(tf.cast(proxies, tf.float32), axis=1)
    n_classes = tf.shape(p)[0]
    cos = tf.matmul(z, p, transpose_b=True)  # (B, C)
    pos_mask = tf.one_hot(tf.reshape(labels, [-1]), n_classes, dtype=tf.float32)
    neg_mask = 1.0 - pos_mask
    # log(1 + Σ exp(u)) computed stably as logsumexp over [0, u...] with the masked-out terms at -inf
    neg_inf = tf.constant(-1e9, tf.float32)
    pos_terms = tf.where(pos_mask > 0, -alpha * (cos - margin), neg_inf)
    neg_terms = tf.where(neg_mask > 0, alpha * (cos + margin), neg_inf)
    zeros = tf.zeros([1, n_classes])
    pos_log = tf.reduce_logsumexp(tf.concat([zeros, pos_terms], axis=0), axis=0)  # (C,)
    neg_log = tf.reduce_logsumexp(tf.concat([zeros, neg_terms], axis=0), axis=0)
    with_pos = tf.cast(tf.reduce_sum(pos_mask, axis=0) > 0, tf.float32)
    pos_part = tf.reduce_sum(pos_log * with_pos) / tf.maximum(tf.reduce_sum(with_pos), 1.0)
    neg_part = tf.reduce_mean(neg_log)
    return pos_part + neg_part


def softmax_ce_loss(logits: Any, labels: Any) -> Any:
    """Mean sparse softmax cross-entropy of (B, C) ``logits`` against (B,) int ``labels``. Scalar float32."""
    import tensorflow as tf

    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
