"""Prompt text: exact token counts with the target's tokenizer, distinct across requests, and a
shipped word list that is one token per word for the default model's tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deploylab.errors import UsageError
from deploylab.loadtest.text import (
    approximate_words,
    join,
    load_tokenizer,
    words_for_tokenizer,
)


def n_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_exact_lengths_with_the_real_tokenizer(smol_tokenizer: Any) -> None:
    words = words_for_tokenizer(smol_tokenizer, "smollm2")
    assert words.exact and len(words.body) > 1000
    rng = np.random.default_rng(0)
    for i, n in enumerate([1, 2, 3, 17, 256, 3000]):
        text = words.words(rng, n, unique=i)
        assert n_tokens(smol_tokenizer, text) == n
    # joined texts add up (documents + question in rag, history in sessions)
    parts = [words.words(rng, n) for n in (100, 37, 5)]
    assert n_tokens(smol_tokenizer, join(*parts)) == 142


def test_shipped_words_are_single_tokens_for_the_default_model(smol_tokenizer: Any) -> None:
    words = approximate_words()
    assert not words.exact and len(words.head) >= 1000
    lengths = smol_tokenizer([" " + w for w in words.body], add_special_tokens=False)
    assert all(len(ids) == 1 for ids in lengths["input_ids"])
    text = words.words(np.random.default_rng(1), 500, unique=3)
    assert n_tokens(smol_tokenizer, text) == 500


def test_prompts_are_distinct_from_the_first_token() -> None:
    words = approximate_words()
    rng = np.random.default_rng(0)
    firsts = {words.words(rng, 50, unique=i).split(" ")[0] for i in range(len(words.head))}
    assert len(firsts) == len(words.head)  # consecutive requests differ at token 1
    many = {words.words(rng, 4, unique=i) for i in range(5000)}
    assert len(many) == 5000


def test_word_sets_pickle_for_worker_processes() -> None:
    import pickle

    words = approximate_words()
    assert pickle.loads(pickle.dumps(words)) == words


def test_unknown_tokenizer_is_a_clear_error() -> None:
    with pytest.raises(UsageError, match="Unknown tokenizer 'no-such-model'"):
        load_tokenizer("no-such-model")


def test_folder_without_a_tokenizer_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="Cannot load a tokenizer"):
        load_tokenizer(str(tmp_path))
