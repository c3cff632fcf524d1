"""`LLM`: offline batched generation, `LLM(model=...).generate(prompts, params)`."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Any

from deploylab.engine.config import EngineConfig
from deploylab.engine.llm_engine import LLMEngine, Prompt
from deploylab.engine.outputs import RequestOutput
from deploylab.engine.sampling_params import SamplingParams
from deploylab.errors import InvalidRequestError

PromptDict = dict[str, Any]  # vLLM's TextPrompt / TokensPrompt


def _plain_prompt(prompt: Any) -> Prompt:
    """A prompt as the engine takes it: text or token ids; vLLM's dict forms unwrapped.
    Raises InvalidRequestError for a dict that is neither (a dict used to be read as its
    key names)."""
    if not isinstance(prompt, dict):
        return prompt  # type: ignore[no-any-return]
    keys = set(prompt)
    if keys == {"prompt"}:
        return prompt["prompt"]  # type: ignore[no-any-return]
    if keys == {"prompt_token_ids"}:
        return prompt["prompt_token_ids"]  # type: ignore[no-any-return]
    raise InvalidRequestError(
        "A dict prompt must have exactly one key, 'prompt' (text) or 'prompt_token_ids' (a "
        f"list of token ids); got keys {sorted(map(str, keys))}.",
        param="prompts",
    )


class LLM:
    """Runs a list of prompts through the engine to completion and returns the results in
    input order. Keyword arguments are `EngineConfig` fields."""

    def __init__(self, model: str | None = None, **engine_kwargs: Any) -> None:
        if model is not None:
            engine_kwargs["model"] = model
        llm_engine = engine_kwargs.pop("llm_engine", None)
        self.llm_engine: LLMEngine = llm_engine or LLMEngine(EngineConfig(**engine_kwargs))
        self._counter = 0

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (None for random weights or a directory without one)."""
        return self.llm_engine.tokenizer

    def generate(
        self,
        prompts: Prompt | PromptDict | Seq[Prompt | PromptDict],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        lora: str | Seq[str | None] | None = None,
    ) -> list[RequestOutput]:
        """Generate for one prompt or a list of prompts (text, token-id lists, or vLLM's
        `{"prompt": text}` / `{"prompt_token_ids": ids}`); a request with `n` samples gives `n`
        outputs in a row (their `index` 0..n-1). `lora` names the LoRA adapter of every
        prompt, or gives one per prompt (None: the base model)."""
        if isinstance(prompts, str | dict) or (
            isinstance(prompts, list) and prompts and isinstance(prompts[0], int)
        ):
            prompt_list = [_plain_prompt(prompts)]
        else:
            prompt_list = [_plain_prompt(p) for p in prompts]  # type: ignore[union-attr]
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params or SamplingParams()] * len(prompt_list)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompt_list):
                raise InvalidRequestError(
                    f"Got {len(params_list)} SamplingParams for {len(prompt_list)} prompts.",
                    param="sampling_params",
                )
        loras = [lora] * len(prompt_list) if lora is None or isinstance(lora, str) else list(lora)
        if len(loras) != len(prompt_list):
            raise InvalidRequestError(
                f"Got {len(loras)} LoRA names for {len(prompt_list)} prompts.", param="lora"
            )
        engine = self.llm_engine
        # Validate everything first, so a bad prompt leaves nothing queued.
        seqs = []
        for prompt, params, name in zip(prompt_list, params_list, loras, strict=True):
            self._counter += 1
            seqs.append(engine.make_sequence(f"llm-{self._counter}", prompt, params, name))
        results = {
            (s.request_id, i): RequestOutput(s.request_id, s.prompt, s.prompt_token_ids, index=i)
            for s in seqs
            for i in range(s.params.n)
        }
        for seq in seqs:
            engine.add_sequence(seq)
        try:
            while engine.has_unfinished_requests():
                for delta in engine.step():
                    results[delta.request_id, delta.index].add(delta)
        finally:
            for (rid, _), result in results.items():
                if not result.finished:
                    engine.abort(rid)
        return list(results.values())

    def chat(
        self,
        messages: list[dict[str, str]] | Seq[list[dict[str, str]]],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Apply the model's chat template to one conversation or a list, then generate."""
        tok = self.tokenizer
        if tok is None or not getattr(tok, "chat_template", None):
            raise InvalidRequestError("This model has no chat template.", param="messages")
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts: list[Prompt] = []
        for conversation in conversations:
            ids = tok.apply_chat_template(
                list(conversation), tokenize=True, add_generation_prompt=True
            )
            prompts.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
        return self.generate(prompts, sampling_params)

    def reset_prefix_cache(self) -> bool:
        """Drop every cached KV block no request holds (vLLM's name); True when none is
        left. Benchmarks call it between runs so that a second run does not find the
        first's prompts cached."""
        manager = self.llm_engine.block_manager
        manager.evict_cached()
        return manager.num_cached_blocks == 0
