"""Judge decoding in the engine (lossy, opt-in): load the judge that fits the served model and
give each verify step's drafts its verdicts (`engine/spec/judge.py` holds the rule)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from deploylab.engine.spec.judge import JudgeHead
from deploylab.engine.spec_decode.head import HEADS_DIR
from deploylab.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    from deploylab.engine.model_runner import ModelRunner
    from deploylab.engine.spec_decode.config import SpeculativeConfig


def default_judge_path(model_name: str) -> Path:
    """Where the shipped judge of a catalog model lives."""
    return HEADS_DIR / f"{model_name}.judge.safetensors"


class Judge:
    """A `JudgeHead` on the runner's device with the delta the config asks for; `verdicts`
    reads the hidden rows of one sequence's drafts."""

    def __init__(self, head: JudgeHead, delta: float) -> None:
        self.head = head
        self.delta = delta

    def verdicts(self, hidden: torch.Tensor) -> torch.Tensor:
        """Bool (k,): the judge's verdict on each draft, from the target's hidden state at it."""
        return self.head.fires(hidden.to(torch.float32), self.delta)

    def span_verdicts(self, hidden: torch.Tensor, spans: list[tuple[int, int]]) -> list[bool]:
        """Per verify row of `spans` ((first row, k) per sequence, k + 1 rows each): whether
        the judge passes the draft that row's logits score (row first + j + 1 read draft j;
        the last row scores none), from one judge call over every draft row."""
        rows: list[int] = []
        for first, k in spans:
            rows.extend(range(first + 1, first + k + 1))
        index = torch.tensor(rows, dtype=torch.int64, device=hidden.device)
        verdicts = iter(self.verdicts(hidden.index_select(0, index)).tolist())
        out: list[bool] = []
        for _, k in spans:
            out += [next(verdicts) for _ in range(k)] + [False]
        return out


def load_judge(config: SpeculativeConfig, runner: ModelRunner | None) -> Judge | None:
    """The judge of `config` (None when judge decoding is off); a clear ConfigError for a
    missing or foreign file or one trained on another hidden size."""
    if not config.judge:
        return None
    if runner is None:
        raise ConfigError("speculative_config.judge needs the engine's model runner.")
    path = Path(config.judge_path or default_judge_path("smollm2-135m-instruct"))
    if not path.is_file():
        raise ConfigError(
            f"speculative_config.judge_path {str(path)!r} does not exist; train a judge with "
            "`python -m deploylab.engine.spec_decode.train_judge --out PATH`."
        )
    try:
        head = JudgeHead.load(path, runner.device)
    except ModelLoadError as exc:
        raise ConfigError(f"speculative_config.judge_path: {exc}") from None
    hidden = runner.model.config.hidden_size
    if head.hidden_size != hidden:
        raise ConfigError(
            f"judge {str(path)!r} reads hidden states of width {head.hidden_size}; the served "
            f"model's are {hidden}. Train a judge for this model."
        )
    runner.keep_hidden = True  # the verdicts read the verify rows' hidden states
    delta = head.delta if config.judge_delta is None else config.judge_delta
    return Judge(head.eval(), delta)
