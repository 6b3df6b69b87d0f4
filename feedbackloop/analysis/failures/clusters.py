"""Clusters of complaints: group free texts into topics with top terms and examples.

TF-IDF (sublinear term frequency, unigrams and bigrams, English stop words removed) and
k-means on the L2-normalised vectors, which is spherical k-means: Euclidean distance on unit
vectors ranks like cosine distance (Dhillon & Modha 2001, "Concept decompositions for large
sparse text data using clustering", Machine Learning 42:143). When ``k`` is not given it is
chosen from 2..``max_k`` by the silhouette (Rousseeuw 1987, J. Comput. Appl. Math. 20:53)
with cosine distance (the smallest k within 10 % of the best score). scikit-learn only;
no model is downloaded.

Representative examples are the texts nearest their cluster's centroid; top terms are the
centroid's largest weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from feedbackloop.errors import MissingDependency

__all__ = ["Cluster", "cluster_texts", "format_clusters"]


@dataclass(frozen=True)
class Cluster:
    """One topic: how many texts, its top terms, and the indices of its members."""

    label: int
    size: int
    share: float
    top_terms: tuple[str, ...]
    examples: tuple[str, ...]
    members: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "size": self.size,
            "share": self.share,
            "top_terms": list(self.top_terms),
            "examples": list(self.examples),
        }


def cluster_texts(
    texts: Sequence[str],
    *,
    k: int | None = None,
    max_k: int = 8,
    top_terms: int = 6,
    examples: int = 3,
    seed: int = 0,
) -> list[Cluster]:
    """Cluster ``texts``, largest cluster first; fewer than 2 usable texts give one cluster."""
    try:
        import numpy as np
        from sklearn.cluster import KMeans
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.metrics import silhouette_score
    except ImportError as e:
        raise MissingDependency("scikit-learn", "analysis") from e
    docs = [t.strip() for t in texts]
    idx = [i for i, t in enumerate(docs) if t]
    if not idx:
        return []
    vec = TfidfVectorizer(
        stop_words="english",
        ngram_range=(1, 2),
        sublinear_tf=True,
        min_df=2 if len(idx) >= 20 else 1,
        max_df=0.9 if len(idx) >= 20 else 1.0,
        max_features=20_000,
        token_pattern=r"(?u)\b[^\W\d_][^\W\d_]+\b",  # words, not numbers or line refs
    )
    try:
        x = vec.fit_transform([docs[i] for i in idx])
    except ValueError:  # nothing but stop words
        return [_single(docs, idx, examples)]
    nonzero = np.asarray(x.getnnz(axis=1)).ravel() > 0
    if nonzero.sum() < 4:
        return [_single(docs, idx, examples)]
    terms = np.asarray(vec.get_feature_names_out())
    n = x.shape[0]
    if k is None:
        scored: list[tuple[float, Any]] = []
        for cand in range(2, min(max_k, n - 1) + 1):
            km = KMeans(n_clusters=cand, n_init=5, random_state=seed).fit(x)
            if len(set(km.labels_)) < 2:
                continue
            score = silhouette_score(
                x, km.labels_, metric="cosine", random_state=seed, sample_size=min(n, 2000)
            )
            scored.append((float(score), km))
        if not scored:
            return [_single(docs, idx, examples)]
        # Text silhouettes are flat near the top and keep creeping up with k; the smallest k
        # within 10 % of the best reads better (one topic, not three phrasings of it).
        top_score = max(sc for sc, _ in scored)
        km = next(m for sc, m in scored if sc >= 0.9 * top_score)
    else:
        km = KMeans(n_clusters=max(1, min(k, n)), n_init=5, random_state=seed).fit(x)
    labels = km.labels_
    out = []
    for c in range(km.n_clusters):
        rows = np.flatnonzero(labels == c)
        if rows.size == 0:
            continue
        centroid = km.cluster_centers_[c]
        order = np.argsort(-centroid)[:top_terms]
        # Rows are unit vectors, so the nearest to the centroid have the largest dot product.
        sim = np.asarray(x[rows] @ centroid).ravel()
        near: list[int] = []
        shown: set[str] = set()
        for j in rows[np.argsort(-sim, kind="stable")]:
            key = " ".join(docs[idx[j]].lower().split())
            if key not in shown:  # distinct examples: a repeated complaint says it once
                shown.add(key)
                near.append(int(j))
            if len(near) == examples:
                break
        out.append(
            Cluster(
                label=c,
                size=int(rows.size),
                share=float(rows.size / n),
                top_terms=tuple(str(terms[j]) for j in order if centroid[j] > 0),
                examples=tuple(docs[idx[j]] for j in near),
                members=tuple(int(idx[j]) for j in rows),
            )
        )
    out.sort(key=lambda cl: -cl.size)
    return out


def _single(docs: Sequence[str], idx: Sequence[int], examples: int) -> Cluster:
    return Cluster(0, len(idx), 1.0, (), tuple(docs[i] for i in idx[:examples]), tuple(idx))


def format_clusters(clusters: Sequence[Cluster], *, heading: str = "", width: int = 160) -> str:
    out = [heading] if heading else []
    if not clusters:
        out.append("No texts to cluster.")
    for i, c in enumerate(clusters, 1):
        terms = ", ".join(c.top_terms) or "(no distinctive terms)"
        out.append(f"{i}. {c.size} texts ({c.share:.0%}): {terms}")
        for ex in c.examples:
            one = " ".join(ex.split())
            out.append(f"     - {one if len(one) <= width else one[: width - 1] + '…'}")
    return "\n".join(out)
