"""Before a run: will the scenario's requests fit the target's context? A target that
advertises `max_model_len` in `/v1/models` refuses (HTTP 400) a request whose prompt plus
`max_tokens` exceed it; this estimates that share from the scenario's first requests."""

from __future__ import annotations

from dataclasses import dataclass

from deploylab.loadtest.workload import WorkloadGenerator

_SAMPLE = 200  # work items looked at
_TEMPLATE_TOKENS = 8  # a chat template adds a few tokens per message


@dataclass(frozen=True)
class FitCheck:
    """How many of the sampled requests exceed the target's context."""

    checked: int
    too_long: int
    largest: int  # tokens (prompt + max_tokens) of the largest request sampled
    limit: int

    def warning(self, scenario: str) -> str | None:
        """A terminal warning, or None when every sampled request fits."""
        if not self.too_long:
            return None
        return (
            f"{self.too_long} of the first {self.checked} requests of '{scenario}' need more "
            f"than the target's max_model_len of {self.limit} tokens (prompt + max_tokens; the "
            f"largest needs {self.largest}): the target will refuse them (usually HTTP 400). "
            "Serve the model with a longer context, or use a scenario with shorter prompts."
        )


def request_sizes(generator: WorkloadGenerator, sample: int = _SAMPLE) -> list[int]:
    """Tokens each sampled request asks the context for: system prompt, the history a
    session resends (earlier turns and their answers, at most max_tokens each), the new
    content, a few template tokens per message, and max_tokens."""
    sizes = []
    for index in range(sample):
        try:
            item = generator.item(index)
        except IndexError:  # a trace shorter than the sample
            break
        history = item.system_tokens + (_TEMPLATE_TOKENS if item.system_tokens else 0)
        for turn in item.turns:
            prompt = history + turn.input_tokens + _TEMPLATE_TOKENS
            sizes.append(prompt + turn.max_tokens)
            history = prompt + turn.max_tokens
            if len(sizes) >= sample:
                return sizes
    return sizes


def check_fit(generator: WorkloadGenerator, limit: int, sample: int = _SAMPLE) -> FitCheck:
    """Compare the sampled request sizes with the target's context length."""
    sizes = request_sizes(generator, sample)
    return FitCheck(
        checked=len(sizes),
        too_long=sum(s > limit for s in sizes),
        largest=max(sizes, default=0),
        limit=limit,
    )
