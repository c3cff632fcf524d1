"""Work items: what each request (or multi-turn session) of a scenario sends.

A generator turns an index into a `WorkItem` deterministically (its random numbers come from
`(seed, stream, index)`), so any worker process can build any item without coordination and a
run is reproducible from its seed. Single requests are sessions of one turn.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from deploylab.loadtest.distributions import zipf_weights
from deploylab.loadtest.scenario import (
    MultiLoraWorkload,
    MultiModelWorkload,
    SessionsWorkload,
    SyntheticWorkload,
)
from deploylab.loadtest.text import WordSet

# Independent random streams: one per purpose, so e.g. documents do not shift requests.
(
    STREAM_REQUEST,
    STREAM_SYSTEM,
    STREAM_DOC,
    STREAM_CORPUS,
    STREAM_BLOCK,
    STREAM_BURST,
    STREAM_SESSION,
    STREAM_TRACE_SESSION,
) = range(8)


def rng_for(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    """The random generator of one (seed, purpose, index)."""
    return np.random.default_rng([seed, stream, index])


@dataclass(slots=True)
class Turn:
    """One request of a session: new user content, its token count, the answer length."""

    content: str
    input_tokens: int
    max_tokens: int
    think_s: float = 0.0  # wait after the previous turn's answer before sending this one


@dataclass(slots=True)
class WorkItem:
    """A session of one or more turns (a single request is a session of one turn)."""

    index: int
    turns: list[Turn]
    system: str = ""
    system_tokens: int = 0
    model: str | None = None  # the scenario's model name; None = the target's default
    session: str | None = None
    classes: dict[str, str] = field(default_factory=dict)


class WorkloadGenerator(Protocol):
    """Builds the work item for any index."""

    def item(self, index: int) -> WorkItem:
        """The work item number `index`."""
        ...

    def model_names(self) -> list[str]:
        """Scenario model names the target must serve (besides the default model)."""
        ...

    def needs_default_model(self) -> bool:
        """Whether some items go to the target's default model (`WorkItem.model` None)."""
        ...

    def recorded_offsets(self) -> list[float] | None:
        """Trace replay: the recorded send time (s) of every item; otherwise None."""
        ...


def shared_system_prompt(words: WordSet, seed: int, tokens: int) -> str:
    """The system prompt shared by all requests of a run (sharing it is the point)."""
    return words.words(rng_for(seed, STREAM_SYSTEM), tokens)


class SyntheticGenerator:
    """Independent requests with lengths from the scenario's distributions."""

    def __init__(self, spec: SyntheticWorkload, words: WordSet, seed: int) -> None:
        self.spec, self.words, self.seed = spec, words, seed
        self.system = shared_system_prompt(words, seed, spec.system_prompt_tokens)

    def item(self, index: int) -> WorkItem:
        rng = rng_for(self.seed, STREAM_REQUEST, index)
        n_in = self.spec.input_tokens.one_int(rng)
        n_out = self.spec.output_tokens.one_int(rng)
        text = self.words.words(rng, n_in, unique=index)
        turn = Turn(text, n_in, n_out)
        return WorkItem(index, [turn], self.system, self.spec.system_prompt_tokens)

    def model_names(self) -> list[str]:
        return []

    def needs_default_model(self) -> bool:
        return True

    def recorded_offsets(self) -> list[float] | None:
        return None


class SessionsGenerator:
    """Multi-turn sessions; later turns resend the history (built at run time)."""

    def __init__(self, spec: SessionsWorkload, words: WordSet, seed: int) -> None:
        self.spec, self.words, self.seed = spec, words, seed
        self.system = shared_system_prompt(words, seed, spec.system_prompt_tokens)

    def item(self, index: int) -> WorkItem:
        spec = self.spec
        rng = rng_for(self.seed, STREAM_SESSION, index)
        n_turns = spec.turns.one_int(rng)
        turns = []
        for k in range(n_turns):
            dist = spec.first_turn_tokens if k == 0 else spec.turn_tokens
            n_in = dist.one_int(rng)
            n_out = spec.output_tokens.one_int(rng)
            think = 0.0 if k == 0 else max(spec.think_time_s.one(rng), 0.0)
            # only the first turn needs a unique opening: later ones follow a unique history
            text = self.words.words(rng, n_in, unique=index if k == 0 else None)
            turns.append(Turn(text, n_in, n_out, think))
        return WorkItem(index, turns, self.system, spec.system_prompt_tokens, session=f"s{index}")

    def model_names(self) -> list[str]:
        return []

    def needs_default_model(self) -> bool:
        return True

    def recorded_offsets(self) -> list[float] | None:
        return None


class MultiModelGenerator:
    """Requests spread over many models with Zipf popularity, in bursts to one model."""

    def __init__(self, spec: MultiModelWorkload, words: WordSet, seed: int) -> None:
        self.spec, self.words, self.seed = spec, words, seed
        self.names = spec.models.resolved()
        self.weights = zipf_weights(len(self.names), spec.zipf_exponent)
        self._burst_starts: list[int] = [0]
        self._burst_models: list[int] = []
        self._burst_rng = rng_for(seed, STREAM_BURST)

    def _extend_bursts(self, index: int) -> None:
        # bursts depend on each other (they tile the index line), so they are generated in
        # order from one stream; every process regenerates the same table.
        while self._burst_starts[-1] <= index:
            model = int(self._burst_rng.choice(len(self.names), p=self.weights))
            length = self.spec.burst_length.one_int(self._burst_rng)
            self._burst_models.append(model)
            self._burst_starts.append(self._burst_starts[-1] + length)

    def model_of(self, index: int) -> str:
        """The model requested by item `index`."""
        self._extend_bursts(index)
        burst = bisect.bisect_right(self._burst_starts, index) - 1
        return self.names[self._burst_models[burst]]

    def item(self, index: int) -> WorkItem:
        rng = rng_for(self.seed, STREAM_REQUEST, index)
        n_in = self.spec.input_tokens.one_int(rng)
        n_out = self.spec.output_tokens.one_int(rng)
        text = self.words.words(rng, n_in, unique=index)
        model = self.model_of(index)
        return WorkItem(index, [Turn(text, n_in, n_out)], model=model, classes={"model": model})

    def model_names(self) -> list[str]:
        return list(self.names)

    def needs_default_model(self) -> bool:
        return False

    def recorded_offsets(self) -> list[float] | None:
        return None


class MultiLoraGenerator:
    """Requests to one base model and many adapters (addressed by model name)."""

    def __init__(self, spec: MultiLoraWorkload, words: WordSet, seed: int) -> None:
        self.spec, self.words, self.seed = spec, words, seed
        self.names = spec.adapters.resolved()
        self.weights = zipf_weights(len(self.names), spec.zipf_exponent)

    def item(self, index: int) -> WorkItem:
        rng = rng_for(self.seed, STREAM_REQUEST, index)
        n_in = self.spec.input_tokens.one_int(rng)
        n_out = self.spec.output_tokens.one_int(rng)
        text = self.words.words(rng, n_in, unique=index)
        if rng.random() < self.spec.base_fraction:
            adapter, model = "base", None
        else:
            adapter = self.names[int(rng.choice(len(self.names), p=self.weights))]
            model = adapter
        return WorkItem(index, [Turn(text, n_in, n_out)], model=model, classes={"adapter": adapter})

    def model_names(self) -> list[str]:
        return list(self.names)

    def needs_default_model(self) -> bool:
        return self.spec.base_fraction > 0

    def recorded_offsets(self) -> list[float] | None:
        return None
