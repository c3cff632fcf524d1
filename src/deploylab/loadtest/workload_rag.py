"""The RAG workload: shared system prompt + k documents from a corpus + a question."""

from __future__ import annotations

import numpy as np

from deploylab.loadtest.distributions import zipf_weights
from deploylab.loadtest.scenario import RagWorkload
from deploylab.loadtest.text import WordSet, join
from deploylab.loadtest.workload import (
    STREAM_CORPUS,
    STREAM_DOC,
    STREAM_REQUEST,
    Turn,
    WorkItem,
    rng_for,
    shared_system_prompt,
)


def size_label(tokens: int) -> str:
    """A short label for a token count: 512, 2k, 16k."""
    if tokens >= 1024 and tokens % 1024 == 0:
        return f"{tokens // 1024}k"
    return str(tokens)


class RagGenerator:
    """Documents are generated once per process (deterministically) and reused verbatim, so a
    document retrieved twice is a shared prefix the server may cache."""

    def __init__(self, spec: RagWorkload, words: WordSet, seed: int) -> None:
        self.spec, self.words, self.seed = spec, words, seed
        self.system = shared_system_prompt(words, seed, spec.system_prompt_tokens)
        corpus = spec.corpus
        sizes = np.array([s.tokens for s in corpus.sizes])
        mix = np.array([s.weight for s in corpus.sizes], dtype=float)
        mix /= mix.sum()
        size_rng = rng_for(seed, STREAM_CORPUS)
        self.doc_tokens = [int(t) for t in size_rng.choice(sizes, size=corpus.documents, p=mix)]
        self.popularity = zipf_weights(corpus.documents, corpus.zipf_exponent)
        self._docs: dict[int, str] = {}

    def document(self, doc: int) -> str:
        """The text of document `doc` (document 0 is the most popular)."""
        text = self._docs.get(doc)
        if text is None:
            text = self.words.words(rng_for(self.seed, STREAM_DOC, doc), self.doc_tokens[doc])
            self._docs[doc] = text
        return text

    def item(self, index: int) -> WorkItem:
        spec = self.spec
        rng = rng_for(self.seed, STREAM_REQUEST, index)
        k = spec.documents_per_request
        docs = rng.choice(len(self.popularity), size=k, replace=False, p=self.popularity)
        n_question = spec.question_tokens.one_int(rng)
        n_out = spec.output_tokens.one_int(rng)
        question = self.words.words(rng, n_question, unique=index)
        content = join(*(self.document(int(d)) for d in docs), question)
        n_in = sum(self.doc_tokens[int(d)] for d in docs) + n_question
        largest = max(self.doc_tokens[int(d)] for d in docs)
        return WorkItem(
            index,
            [Turn(content, n_in, n_out)],
            self.system,
            spec.system_prompt_tokens,
            classes={"doc_size": size_label(largest)},
        )

    def model_names(self) -> list[str]:
        return []

    def needs_default_model(self) -> bool:
        return True

    def recorded_offsets(self) -> list[float] | None:
        return None
