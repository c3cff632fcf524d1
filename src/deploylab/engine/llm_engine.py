"""`LLMEngine`: requests in, one batched step at a time, deltas out (single-threaded core)."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from deploylab.catalog import resolve_model
from deploylab.engine.async_step import OverlapStepper, drop_placeholder, make_overlap
from deploylab.engine.block_manager import BlockManager
from deploylab.engine.config import EngineConfig
from deploylab.engine.cpu_quant import apply_quantization
from deploylab.engine.cpu_threads import step_threads
from deploylab.engine.detokenizer import IncrementalDetokenizer
from deploylab.engine.distributed.hook import start_tensor_parallel
from deploylab.engine.kv_cache import KVCache, num_blocks_for
from deploylab.engine.kv_tiers import build_kv_tiers
from deploylab.engine.lora import LoraManager, LoraNotFoundError, lora_config
from deploylab.engine.model_runner import ModelRunner
from deploylab.engine.models.config import LlamaConfig
from deploylab.engine.models.llama import LlamaForCausalLM
from deploylab.engine.outputs import EngineStats, RequestDelta, TokenLogprobs
from deploylab.engine.prompt_logprobs import record_prompt_logprobs
from deploylab.engine.sampler import Sampler
from deploylab.engine.sampling_params import SamplingParams
from deploylab.engine.scheduler import Scheduler, SchedulerOutput
from deploylab.engine.sequence import Sequence
from deploylab.engine.sleep import EngineSleeper, SleepReport
from deploylab.engine.spec_decode import SpecDecoder, parse_speculative_config
from deploylab.engine.spec_decode.config import cuda_graph_rows
from deploylab.engine.stop import find_stop_string, holdback
from deploylab.engine.structured import StructuredBackend
from deploylab.engine.tokenizer import eos_token_ids
from deploylab.errors import ConfigError, InvalidRequestError, PromptTooLongError

if TYPE_CHECKING:
    from deploylab.engine.distributed.executor import TensorParallel

logger = logging.getLogger(__name__)

Prompt = str | list[int]


class LLMEngine:
    """The engine core: validation, scheduling, the forward pass, sampling, stop checks.

    Not thread-safe: one thread calls `add_request`/`step`/`abort_request` (`AsyncEngine`
    wraps it in a background thread). `make_sequence` (validation and tokenisation only) may
    run on another thread.
    """

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        model: LlamaForCausalLM | None = None,
        tokenizer: Any | None = None,
        **overrides: Any,
    ) -> None:
        config = config or EngineConfig()
        if overrides:
            config = replace(config, **overrides)
        self.config = config
        self.device = config.torch_device()
        self.dtype = config.torch_dtype(self.device)
        if config.num_threads and self.device.type == "cpu":
            torch.set_num_threads(config.num_threads)
        self.tp: TensorParallel | None = None  # tensor parallelism (off: None)
        if config.tensor_parallel_size > 1 or config.distributed_executor_backend == "mp":
            self.tp, model, tokenizer = start_tensor_parallel(config, model)
        try:
            self._build(config, model, tokenizer)
        except BaseException:
            if self.tp is not None:  # a half-built engine leaves the process group at once
                self.tp.close()
            raise

    def _build(self, config: EngineConfig, model: Any, tokenizer: Any) -> None:
        """Everything after tensor parallelism started: weights, KV cache, runner, hooks."""
        own_model = model is None
        if model is None:
            model, tokenizer = self._load(config)
        self.model = model.to(self.device)
        self.model_config: LlamaConfig = model.config
        self.sleeper = EngineSleeper(self)
        if config.enable_sleep_mode and self.tp is None:  # weights at fixed addresses
            self.sleeper.fix_weights()
        self.tokenizer = tokenizer
        self.tokenizer_lock = threading.Lock()
        self.eos_token_ids = list(
            dict.fromkeys([*self.model_config.eos_token_ids, *eos_token_ids(tokenizer)])
        )
        bs = config.block_size
        if config.num_gpu_blocks_override is not None and self.device.type == "cuda":
            num_blocks = config.num_gpu_blocks_override
        else:
            num_blocks = num_blocks_for(
                self.model_config,
                bs,
                self.dtype,
                self.device,
                config.kv_cache_gib,
                config.gpu_memory_utilization,
            )
        num_blocks -= 1  # the scratch block below
        self.max_model_len = self._max_model_len(config, num_blocks * bs)
        # One extra physical block: scratch space for the padding rows of CUDA-graph steps.
        self.kv_cache = KVCache(self.model_config, num_blocks + 1, bs, self.dtype, self.device)
        self.sleeper.fix_kv()  # sleep mode: the KV cache at fixed addresses too
        self.block_manager = BlockManager(num_blocks, bs, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            self.block_manager, config.max_num_seqs, config.max_num_batched_tokens
        )
        identity = f"{config.random_weights or config.model}|{self.model_config}"
        self.kv_tiers = build_kv_tiers(config, self.kv_cache, identity)  # off: None
        self.block_manager.tiers = self.kv_tiers
        self.runner = ModelRunner(
            self.model, self.kv_cache, self.device, self.max_model_len, config.tree_attention
        )
        self.quantization = apply_quantization(config, self.model, self.device, own_model)
        self.runner.step_threads = step_threads(config.num_threads, self.device.type)
        if self.tp is not None:
            self.runner = self.tp.attach(self.runner, num_blocks + 1, self.max_model_len)  # type: ignore[assignment]
        self.lora: LoraManager | None = None  # the multi-LoRA hook (off: None)
        lora_settings = lora_config(config)
        if lora_settings is not None:
            self.lora = LoraManager(self.model, lora_settings, self.device, self.dtype)
            self.runner.lora = self.lora
            self.scheduler.lora_gate = self.lora.admit
            for name, path in lora_settings.modules.items():
                self.lora.add(name, path)
        if config.cuda_graphs and self.device.type == "cuda":
            rows = cuda_graph_rows(config.max_num_seqs, config.speculative_config)
            self.runner.enable_cuda_graphs(rows, self.max_model_len)
        if config.cpu_compile and (self.device.type != "cpu" or self.tp is not None):
            logger.warning(
                "cpu_compile compiles the single-device CPU decode step; ignored on %s%s",
                self.device, " with tensor parallelism" if self.tp is not None else "",
            )  # fmt: skip
        elif config.cpu_compile:
            from deploylab.engine.cpu_decode import build_compiled_decode

            self.runner.cpu_decode = build_compiled_decode(
                self.model, self.kv_cache, self.runner.step_threads
            )
        self.sampler = Sampler(self.device, config.seed, self.eos_token_ids)
        # Errors of requests that failed inside a step (finish_reason "error"), by request id.
        self.failures: dict[str, BaseException] = {}
        self._batch: list[Sequence] | None = None  # the current step's sequences
        spec_config = parse_speculative_config(config.speculative_config)
        self.spec: SpecDecoder | None = None  # the speculative-decoding hook (off: None)
        if spec_config is not None:
            self.spec = SpecDecoder(
                spec_config, self.scheduler, self.max_model_len, runner=self.runner
            )
        self._seqs: dict[str, Sequence] = {}  # request id -> its first sample
        self._forks: dict[str, list[Sequence]] = {}  # request id -> samples 1..n-1
        self.structured = StructuredBackend(tokenizer, self.model_config.vocab_size)
        self._arrivals = itertools.count()
        self._prompt_tokens = 0
        self._generation_tokens = 0
        self._finished = 0
        self._steps = 0
        self.overlap: OverlapStepper | None = make_overlap(self)  # async scheduling (off: None)

    @staticmethod
    def _load(config: EngineConfig) -> tuple[LlamaForCausalLM, Any | None]:
        device = config.torch_device()
        dtype = config.torch_dtype(device)
        if config.random_weights:
            from deploylab.engine.models.loader import init_random_model
            from deploylab.engine.models.presets import get_preset

            preset = get_preset(config.random_weights)
            return init_random_model(preset, dtype, device, config.seed), None
        from deploylab.engine.models.loader import load_model
        from deploylab.engine.tokenizer import load_tokenizer

        path = resolve_model(config.model)
        model, _ = load_model(path, dtype, device)
        return model, load_tokenizer(path)

    def _max_model_len(self, config: EngineConfig, cache_tokens: int) -> int:
        model_max = self.model_config.max_position_embeddings
        if config.max_model_len is None:
            if cache_tokens < model_max:
                logger.info("max_model_len capped to the KV cache: %d tokens", cache_tokens)
            return min(model_max, cache_tokens)
        if config.max_model_len > cache_tokens:
            raise ConfigError(
                f"max_model_len ({config.max_model_len}) exceeds the KV cache ({cache_tokens} "
                "tokens); raise kv_cache_gib / gpu_memory_utilization or lower max_model_len."
            )
        if config.max_model_len > model_max:
            raise ConfigError(
                f"max_model_len ({config.max_model_len}) exceeds the model's context "
                f"({model_max} tokens)."
            )
        return config.max_model_len

    # ---- sleep mode (engine/sleep.py) ----------------------------------------------------
    def sleep(self, level: int = 1) -> SleepReport:
        """Free the weights (level 1: kept in host memory) and the KV cache; no requests may
        be in flight. `wake_up` restores them."""
        return self.sleeper.sleep(level)

    def wake_up(self) -> SleepReport:
        """Undo `sleep`: weights back on the device, a fresh KV cache of the same size."""
        return self.sleeper.wake_up()

    # ---- requests ----------------------------------------------------------------------
    def tokenize(self, prompt: str) -> list[int]:
        """Token ids of a text prompt (special tokens added as the tokenizer is set up)."""
        if self.tokenizer is None:
            raise InvalidRequestError(
                "This model has no tokenizer: pass the prompt as a list of token ids.",
                param="prompt",
            )
        with self.tokenizer_lock:
            ids: list[int] = self.tokenizer.encode(prompt)
        return ids

    def make_sequence(
        self,
        request_id: str,
        prompt: Prompt,
        params: SamplingParams | None = None,
        lora_name: str | None = None,
    ) -> Sequence:
        """Validate and tokenize a request (no engine state is touched); `lora_name` picks
        a loaded LoRA adapter (LoraNotFoundError when unknown)."""
        lora_id = self._resolve_lora(lora_name)
        params = params or SamplingParams()
        if isinstance(params, SamplingParams):
            params.validate()
        else:
            raise InvalidRequestError("sampling params must be a SamplingParams", param="params")
        vocab = self.model_config.vocab_size
        bad_stop = [t for t in params.stop_token_ids if t >= vocab]
        if bad_stop:
            raise InvalidRequestError(
                f"stop_token_ids must be token ids in [0, {vocab}); got {bad_stop[:3]}.",
                param="stop_token_ids",
            )
        text: str | None = None
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError("The prompt is empty.", param="prompt")
            text = prompt
            ids = self.tokenize(prompt)
        else:
            ids = list(prompt)
            bad = [] if _plain_ids(ids, vocab) else _bad_ids(ids, vocab)
            if bad:
                raise InvalidRequestError(
                    f"Prompt token ids must be integers in [0, {vocab}); got {bad[:3]}.",
                    param="prompt",
                )
        if not ids:
            raise InvalidRequestError("The prompt is empty (no tokens).", param="prompt")
        if params.n > self.config.max_num_seqs:
            raise InvalidRequestError(
                f"n ({params.n}) exceeds this engine's max_num_seqs "
                f"({self.config.max_num_seqs}); ask for fewer samples.",
                param="n",
            )
        if len(ids) >= self.max_model_len:
            raise PromptTooLongError(
                f"The prompt has {len(ids)} tokens; this engine's context is "
                f"{self.max_model_len} tokens, which must also hold at least one generated "
                "token. Shorten the prompt.",
                param="prompt",
            )
        seq = Sequence(request_id, ids, params, next(self._arrivals), prompt=text)
        if lora_id:
            seq.lora_id, seq.lora_name = lora_id, lora_name
        self._attach_state(seq)
        return seq

    # ---- LoRA adapters (engine/lora) ---------------------------------------------------
    def _resolve_lora(self, name: str | None) -> int:
        if name is None:
            return 0
        if self.lora is None:
            raise LoraNotFoundError(
                f"The model '{name}' does not exist: LoRA adapters are off on this engine "
                "(start it with enable_lora / --lora NAME=PATH)."
            )
        return self.lora.resolve(name)

    def add_lora(self, name: str, path: str) -> None:
        """Load a PEFT LoRA adapter under `name` (LoraAdapterError for a bad one)."""
        if self.lora is None:
            raise ConfigError("LoRA is off on this engine; start it with enable_lora=True.")
        self.lora.add(name, path)

    def remove_lora(self, name: str) -> None:
        """Unload adapter `name`; requests already using it finish with it."""
        if self.lora is None:
            raise LoraNotFoundError(f"The LoRA adapter '{name}' is not loaded (LoRA is off).")
        self.lora.remove(name)

    def list_loras(self) -> list[str]:
        """Names of the loaded LoRA adapters."""
        return self.lora.names() if self.lora is not None else []

    def _attach_state(self, seq: Sequence) -> None:
        """Give a new sample its detokenizer and, with structured output, its grammar state."""
        if self.tokenizer is not None:
            seq.detokenizer = IncrementalDetokenizer(
                self.tokenizer, seq.prompt_token_ids, seq.params.skip_special_tokens
            )
        if seq.params.structured_output is not None:
            seq.structured = self.structured.start(seq.params.structured_output)

    def add_sequence(self, seq: Sequence) -> None:
        """Queue a sequence made by `make_sequence`."""
        if seq.request_id in self._seqs:
            raise InvalidRequestError(
                f"Request id '{seq.request_id}' is already in use.", param="request_id"
            )
        self._seqs[seq.request_id] = seq
        self._prompt_tokens += seq.num_prompt_tokens
        self.scheduler.add(seq)

    def add_request(
        self,
        request_id: str,
        prompt: Prompt,
        params: SamplingParams | None = None,
        lora_name: str | None = None,
    ) -> Sequence:
        """Validate, tokenize and queue a request; bad input raises InvalidRequestError."""
        seq = self.make_sequence(request_id, prompt, params, lora_name)
        self.add_sequence(seq)
        return seq

    def abort(self, request_id: str) -> list[RequestDelta]:
        """Stop all samples of a request now and free their blocks; their final deltas."""
        deltas = []
        for seq in self._group(request_id):
            if not seq.is_finished:
                drop_placeholder(seq)  # a token still in flight is never reported
                self.scheduler.finish(seq, "abort")
                deltas.append(self._finish_delta(seq))
        return deltas

    def abort_request(self, request_id: str) -> RequestDelta | None:
        """`abort`, returning the request's last delta (None if unknown)."""
        deltas = self.abort(request_id)
        return deltas[-1] if deltas else None

    def _group(self, request_id: str) -> list[Sequence]:
        first = self._seqs.get(request_id)
        return [first, *self._forks.get(request_id, ())] if first is not None else []

    def has_unfinished_requests(self) -> bool:
        """True while a request is waiting or running."""
        return self.scheduler.has_unfinished()

    # ---- the step ----------------------------------------------------------------------
    def step(self) -> list[RequestDelta]:
        """Run one batch; deltas of the requests that produced a token or finished.

        An error in one request's own work (sampling params, stop checks) fails only that
        request (finish_reason "error", the exception in `failures`); any other error is
        raised, and `fail_step` then ends the step's requests.
        """
        if self.overlap is not None:  # async scheduling (engine/async_step.py)
            return self.overlap.step()
        self._batch = None
        out = self._schedule()
        if out.is_empty:
            return []
        return self._execute_scheduled(out)

    def _schedule(self) -> SchedulerOutput:
        """The next batch, with the speculative and KV-tier hooks around the scheduler."""
        spec = self.spec
        if spec is not None:
            spec.propose()
        out = self.scheduler.schedule()
        if self.kv_tiers is not None:
            self.kv_tiers.transfer()  # evicted blocks out, tier hits in, before any write
        if spec is not None:
            spec.reconcile(out)
        return out

    def _execute_scheduled(self, out: SchedulerOutput) -> list[RequestDelta]:
        """Run a scheduled batch synchronously: forward, sampling, bookkeeping."""
        spec, tiers = self.spec, self.kv_tiers
        self._batch = [item.seq for item in out.scheduled]
        self._steps += 1
        t0 = time.perf_counter()
        seqs, logits = self.runner.execute(out)
        for seq, p0, chunk_logits in self.runner.prompt_logits:
            record_prompt_logprobs(seq, p0, chunk_logits)
        if spec is not None:
            spec.after_forward(seqs)
        if spec is not None and spec.drafting:
            return self._spec_step(out, seqs, logits)
        self.scheduler.update_after_step(out)
        if spec is not None:
            spec.release_dropped()
        if logits is None:
            return []
        if any(s.pending_forks for s in seqs):
            seqs, logits = self._fork_samples(seqs, logits)
        faults: dict[int, BaseException] = {}
        with torch.inference_mode():
            tokens, logprobs = self.sampler(logits, seqs, faults)
        if tiers is not None:  # the sampler waited for the device: the step's real time
            prefill = sum(s.num_new_tokens for s in out.scheduled if s.num_new_tokens > 1)
            tiers.observe_prefill(prefill, time.perf_counter() - t0)
        return self._append_tokens(seqs, tokens, logprobs, faults)

    def _append_tokens(
        self,
        seqs: list[Sequence],
        tokens: list[int],
        logprobs: list[TokenLogprobs | None],
        faults: dict[int, BaseException],
    ) -> list[RequestDelta]:
        """Append each sequence's sampled token, check its stops; the step's deltas.
        Sequences finished meanwhile (aborted during an overlapped step) are skipped."""
        deltas = []
        with self.tokenizer_lock:
            for i, (seq, token, lp) in enumerate(zip(seqs, tokens, logprobs, strict=True)):
                if seq.is_finished:
                    continue
                if i not in faults:
                    try:
                        self._append_token(seq, token, lp)
                        deltas.append(self._delta(seq))
                        continue
                    except Exception as exc:  # noqa: BLE001 - this request's fault only
                        faults[i] = exc
                deltas.append(self._fail(seq, faults[i]))
        return deltas

    def fail_step(self, exc: BaseException) -> list[RequestDelta]:
        """After `step` raised: end the requests of that step (all running ones if the batch
        was not formed yet) with finish_reason "error", so the engine can go on."""
        victims = self._batch if self._batch is not None else list(self.scheduler.running)
        self._batch = None
        if self.overlap is not None:
            self.overlap.reset()
        return [self._fail(seq, exc) for seq in victims if not seq.is_finished]

    def _fail(self, seq: Sequence, exc: BaseException) -> RequestDelta:
        drop_placeholder(seq)
        logger.error("request %s failed inside the engine: %r", seq.request_id, exc)
        self.scheduler.finish(seq, "error")
        self.failures[seq.request_id] = exc
        return self._finish_delta(seq)

    def _fork_samples(
        self, seqs: list[Sequence], logits: torch.Tensor
    ) -> tuple[list[Sequence], torch.Tensor]:
        """Fork the other `n - 1` samples of requests whose prompt was just computed: they
        share its KV blocks (the partial last block is copied on write) and its logits row."""
        rows: list[int] = []
        out: list[Sequence] = []
        for i, seq in enumerate(seqs):
            rows.append(i)
            out.append(seq)
            forks = self._forks.setdefault(seq.request_id, []) if seq.pending_forks else []
            for index in range(1, seq.pending_forks + 1):
                child = seq.fork(index)
                self.block_manager.fork(seq, child)
                self._attach_state(child)
                self.scheduler.add_forked(child)
                forks.append(child)
                rows.append(i)
                out.append(child)
            seq.pending_forks = 0
        index_t = torch.tensor(rows, dtype=torch.int64, device=logits.device)
        return out, logits.index_select(0, index_t)

    def _spec_step(
        self, out: SchedulerOutput, seqs: list[Sequence], logits: torch.Tensor | None
    ) -> list[RequestDelta]:
        """A step that verified speculative drafts: append each sequence's accepted tokens
        (up to a stop), then mark the valid tokens computed and roll back the rest."""
        assert self.spec is not None
        with torch.inference_mode():
            results = self.spec.verify(out, seqs, logits, self.sampler)
        deltas = []
        with self.tokenizer_lock:
            for seq, tokens, logprobs in results:
                for token, lp in zip(tokens, logprobs, strict=True):
                    self._append_token(seq, token, lp)
                    if seq.is_finished:
                        break
                deltas.append(self._delta(seq))
        self.scheduler.update_after_step(out)
        self.spec.rollback(out)
        return deltas

    def _append_token(self, seq: Sequence, token: int, lp: TokenLogprobs | None) -> None:
        params = seq.params
        if params.max_tokens == 0:  # prompt logprobs only: nothing is generated
            self.scheduler.finish(seq, "length")
            return
        self._generation_tokens += 1
        seq.token_ids.append(token)
        if lp is not None:
            seq.logprobs.append(lp)
        n_out = seq.num_output_tokens
        may_stop = n_out >= params.min_tokens
        reason: str | None = None
        stop_reason: int | str | None = None
        if may_stop and (
            token in params.stop_token_ids
            or (not params.ignore_eos and token in self.eos_token_ids)
        ):
            reason = "stop"
            stop_reason = token if token in params.stop_token_ids else None
        elif seq.detokenizer is not None:
            new = seq.detokenizer.add(token)
            seq.text += new
            found = find_stop_string(seq.text, len(new), params.stop) if may_stop else None
            if found is not None:
                stop, at = found
                seq.text = seq.text[: at + len(stop) if params.include_stop_str_in_output else at]
                reason, stop_reason = "stop", stop
            elif seq.structured is not None and seq.structured.advance(token):
                reason = "stop"  # the grammar has ended: nothing else may follow
        if reason is None and (
            (params.max_tokens is not None and n_out >= params.max_tokens)
            or seq.num_tokens >= self.max_model_len
        ):
            reason = "length"
        if reason is not None:
            if seq.detokenizer is not None and not isinstance(stop_reason, str):
                seq.text += seq.detokenizer.flush()
            self.scheduler.finish(seq, reason, stop_reason)

    def _delta(self, seq: Sequence) -> RequestDelta:
        if seq.is_finished:
            return self._finish_delta(seq)
        visible = len(seq.text) - holdback(seq.params.stop) if seq.params.stop else len(seq.text)
        return self._make_delta(seq, max(visible, seq.num_emitted_chars))

    def _finish_delta(self, seq: Sequence) -> RequestDelta:
        rid = seq.request_id
        done = all(s.is_finished for s in self._group(rid))
        if done:
            self._seqs.pop(rid, None)
            self._forks.pop(rid, None)
            self._finished += 1
        return self._make_delta(seq, len(seq.text), done)

    def _make_delta(self, seq: Sequence, visible_chars: int, done: bool = False) -> RequestDelta:
        first_tok = seq.num_prompt_tokens + seq.num_emitted_tokens
        new_ids = seq.token_ids[first_tok:]
        logprobs = None
        if seq.params.logprobs is not None:
            logprobs = seq.logprobs[seq.num_emitted_tokens :]
        new_text = seq.text[seq.num_emitted_chars : visible_chars]
        seq.num_emitted_tokens += len(new_ids)
        seq.num_emitted_chars = max(seq.num_emitted_chars, visible_chars)
        prompt_logprobs = None
        if seq.params.prompt_logprobs is not None and not seq.prompt_logprobs_sent:
            prompt_logprobs, seq.prompt_logprobs_sent = seq.prompt_logprobs, True
        return RequestDelta(
            request_id=seq.request_id,
            new_token_ids=new_ids,
            new_text=new_text,
            finish_reason=seq.finish_reason,
            stop_reason=seq.stop_reason,
            logprobs=logprobs,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_cached_tokens=seq.num_cached_tokens,
            index=seq.index,
            request_finished=done,
            prompt_logprobs=prompt_logprobs,
        )

    def stats(self) -> EngineStats:
        """A snapshot of queue sizes, KV usage and token counters."""
        bm = self.block_manager
        spec = self.spec.stats if self.spec is not None else None
        lora = self.lora
        return EngineStats(
            num_running=self.scheduler.num_running,
            num_waiting=self.scheduler.num_waiting,
            kv_cache_usage=bm.usage,
            num_kv_blocks=bm.num_blocks,
            prefix_cache_queries=bm.prefix_queries,
            prefix_cache_hits=bm.prefix_hits,
            prompt_tokens_total=self._prompt_tokens,
            generation_tokens_total=self._generation_tokens,
            num_preemptions_total=self.scheduler.num_preemptions,
            num_recomputed_tokens_total=self.scheduler.num_recomputed_tokens,
            num_tree_attention_steps_total=self.runner.tree.steps if self.runner.tree else 0,
            num_requests_finished_total=self._finished,
            num_steps_total=self._steps,
            spec_num_drafts_total=spec.num_drafts if spec else None,
            spec_num_draft_tokens_total=spec.num_draft_tokens if spec else 0,
            spec_num_accepted_tokens_total=spec.num_accepted_tokens if spec else 0,
            spec_accepted_per_position=tuple(spec.accepted_per_position) if spec else (),
            # Without LoRA the queues are not walked: AsyncEngine takes stats every step.
            lora_running=_lora_names(self.scheduler.running) if lora is not None else (),
            lora_waiting=_lora_names(self.scheduler.waiting) if lora is not None else (),
            lora_max=lora.config.max_loras if lora is not None else 0,
            lora_loads_total=lora.stats.loads if lora is not None else 0,
            lora_evictions_total=lora.stats.evictions if lora is not None else 0,
            **(self.kv_tiers.stats_fields() if self.kv_tiers is not None else {}),
        )


def _lora_names(seqs: Iterable[Sequence]) -> tuple[str, ...]:
    """The distinct adapter names of `seqs`, sorted."""
    return tuple(sorted({s.lora_name for s in seqs if s.lora_name is not None}))


def _bad_ids(ids: list[Any], vocab: int) -> list[Any]:
    """The ids that are not plain ints in [0, vocab) (the slow scan, for the error message)."""
    return [t for t in ids if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab]


def _plain_ids(ids: list[Any], vocab: int) -> bool:
    """True when every id is a plain int in [0, vocab), checked at C speed (the per-element
    scan took ~4 ms of a 16k-token prompt's admission on this CPU)."""
    return not ids or (set(map(type, ids)) == {int} and min(ids) >= 0 and max(ids) < vocab)
