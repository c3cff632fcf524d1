"""Scenario generators produce the advertised mixes (fixed seeds, statistical checks)."""

from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from deploylab.loadtest.distributions import zipf_weights
from deploylab.loadtest.library import load_scenario
from deploylab.loadtest.plan import make_generator
from deploylab.loadtest.text import approximate_words

WORDS = approximate_words()


def gen(name: str, seed: int = 0):  # noqa: ANN201 - the generator protocol
    return make_generator(load_scenario(name).scenario, WORDS, seed)


def test_items_are_deterministic_per_seed_and_index() -> None:
    a, b, c = gen("chat-short", 1), gen("chat-short", 1), gen("chat-short", 2)
    assert a.item(17).turns[0].content == b.item(17).turns[0].content
    assert a.item(17).turns[0].content != c.item(17).turns[0].content
    assert pickle.loads(pickle.dumps(a)).item(3).turns[0].content == a.item(3).turns[0].content


def test_chat_short_lengths_are_uniform_in_range() -> None:
    g = gen("chat-short")
    items = [g.item(i) for i in range(3000)]
    n_in = np.array([it.turns[0].input_tokens for it in items])
    n_out = np.array([it.turns[0].max_tokens for it in items])
    assert n_in.min() >= 32 and n_in.max() <= 256 and n_out.min() >= 16 and n_out.max() <= 128
    assert stats.chisquare(np.bincount(n_out - 16, minlength=113)).pvalue > 0.001
    assert all(len(it.turns[0].content.split(" ")) == it.turns[0].input_tokens for it in items)


def test_rag_documents_follow_zipf_and_the_size_mix() -> None:
    g = gen("rag")
    spec = load_scenario("rag").scenario.workload
    sizes = Counter(g.doc_tokens)
    mix = {s.tokens: s.weight for s in spec.corpus.sizes}
    expected = np.array([mix[t] * spec.corpus.documents for t in sorted(mix)])
    assert stats.chisquare([sizes[t] for t in sorted(mix)], expected).pvalue > 0.01
    # document usage over many requests follows the Zipf popularity (top 10 documents)
    used: Counter[int] = Counter()
    docs_text = {g.document(d): d for d in range(spec.corpus.documents)}
    for i in range(600):
        content = g.item(i).turns[0].content
        for text, d in docs_text.items():
            if d < 10 and text in content:
                used[d] += 1
    weights = zipf_weights(spec.corpus.documents, spec.corpus.zipf_exponent)
    assert used[0] > used[3] > used[9]
    assert used[0] / 600 == pytest.approx(1 - (1 - weights[0]) ** 3, abs=0.08)


def test_rag_shares_the_system_prompt_and_labels_doc_size() -> None:
    g = gen("rag")
    a, b = g.item(1), g.item(2)
    assert a.system == b.system and a.system_tokens == 512
    assert a.turns[0].content != b.turns[0].content
    assert a.classes["doc_size"] in {"512", "2k", "8k", "16k"}


def test_sessions_have_growing_turns_with_think_times() -> None:
    g = gen("interactive-long")
    items = [g.item(i) for i in range(400)]
    turns = np.array([len(it.turns) for it in items])
    assert turns.min() >= 4 and turns.max() <= 12
    assert stats.chisquare(np.bincount(turns - 4, minlength=9)).pvalue > 0.001
    thinks = np.array([t.think_s for it in items for t in it.turns[1:]])
    assert thinks.min() >= 2 and thinks.mean() == pytest.approx(20, rel=0.15)
    assert all(it.turns[0].think_s == 0 for it in items)
    assert items[0].session == "s0" and items[0].turns[1].content != items[1].turns[1].content


def test_multi_model_zipf_popularity_and_bursts() -> None:
    g = gen("multi-model-rare")
    models = [g.item(i).model for i in range(4000)]
    lengths = np.diff(g._burst_starts)
    # bursts: 1-4 consecutive requests to one model, uniformly
    assert stats.chisquare(np.bincount(lengths - 1, minlength=4)).pvalue > 0.001
    # each burst's model drawn with Zipf popularity
    per_burst = np.bincount(g._burst_models, minlength=20)
    weights = zipf_weights(20, 1.2)
    top = per_burst[:5]
    expected = weights[:5] / weights[:5].sum() * top.sum()
    assert stats.chisquare(top, expected).pvalue > 0.001
    for start, model in zip(g._burst_starts[:50], g._burst_models[:50], strict=False):
        assert models[start] == f"model-{model}"
    assert g.model_names()[0] == "model-0" and len(g.model_names()) == 20
    assert not g.needs_default_model()


def test_multi_lora_base_fraction_and_adapters() -> None:
    g = gen("multi-lora")
    items = [g.item(i) for i in range(4000)]
    base = sum(it.model is None for it in items) / len(items)
    assert base == pytest.approx(0.1, abs=0.02)
    adapters = Counter(it.classes["adapter"] for it in items if it.model is not None)
    weights = zipf_weights(16, 0.8)
    observed = [adapters[f"lora-{i}"] for i in range(16)]
    assert stats.chisquare(observed, weights * sum(observed)).pvalue > 0.001
    assert g.needs_default_model()
