"""Complaint clusters separate planted topics."""

from __future__ import annotations

import random

from planted_failures import COMPLAINT_TOPICS, complaint

from feedbackloop.analysis.failures.clusters import cluster_texts, format_clusters


def _texts(seed: int = 1) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    texts, truth = [], []
    for _ in range(40):
        for topic in COMPLAINT_TOPICS:
            texts.append(complaint(topic, rng))
            truth.append(topic)
    return texts, truth


def test_planted_topics_land_in_separate_clusters() -> None:
    texts, truth = _texts()
    clusters = cluster_texts(texts, k=3)
    assert len(clusters) == 3
    topics = [{truth[i] for i in c.members} for c in clusters]
    assert all(len(t) == 1 for t in topics)
    assert {next(iter(t)) for t in topics} == set(COMPLAINT_TOPICS)
    assert sum(c.size for c in clusters) == len(texts)
    for c in clusters:
        assert c.top_terms and len(c.examples) == len(set(c.examples)) <= 3


def test_automatic_k_keeps_topics_apart() -> None:
    texts, truth = _texts(2)
    clusters = cluster_texts(texts)
    assert len(clusters) >= 3
    assert all(len({truth[i] for i in c.members}) == 1 for c in clusters)
    text = format_clusters(clusters)
    assert "texts (" in text


def test_degenerate_inputs() -> None:
    assert cluster_texts([]) == []
    assert cluster_texts(["", "  "]) == []
    one = cluster_texts(["the", "and"])
    assert len(one) == 1 and one[0].size == 2
