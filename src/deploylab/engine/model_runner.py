"""`ModelRunner`: turns a scheduled batch into tensors, runs the model, returns logits."""

from __future__ import annotations

import logging
from array import array
from typing import TYPE_CHECKING

import torch

from deploylab.engine.async_step import HostStager, fill_placeholders
from deploylab.engine.attention import AttentionMetadata, DecodeGroup, PrefillChunk, Workspace
from deploylab.engine.block_manager import extend_with_tables
from deploylab.engine.cpu_linear import prepack_linears, prepack_supported
from deploylab.engine.cpu_threads import StepThreads
from deploylab.engine.cuda_graphs import DecodeGraphs
from deploylab.engine.kv_cache import KVCache
from deploylab.engine.models.llama import LlamaForCausalLM
from deploylab.engine.scheduler import ScheduledSeq, SchedulerOutput
from deploylab.engine.sequence import Sequence
from deploylab.engine.spec_decode.tree_drafts import row_offsets
from deploylab.engine.spec_decode.tree_verify import verify_hook
from deploylab.engine.step_rows import StepRows, chunk_slots, group_sizes
from deploylab.engine.triton_attention import PagedDecodeFn, load_paged_decode
from deploylab.engine.triton_prefill import PagedPrefillFn, PrefillBatch, load_paged_prefill
from deploylab.engine.triton_tree import TreeDecoder

if TYPE_CHECKING:
    from deploylab.engine.cpu_decode import CompiledDecode
    from deploylab.engine.lora import LoraManager

logger = logging.getLogger(__name__)

# Decode attention groups: a group's gathered keys stay under this many bytes (on the CPU so
# that keys and values are still in the last-level cache when SDPA reads them; on CUDA to
# bound the scratch buffer), and a sequence shorter than MIN_GROUP_FILL of the group's padded
# length starts a new group (less padding).
CPU_GROUP_BYTES = 4 * 1024**2
CUDA_GROUP_BYTES = 256 * 1024**2
MIN_GROUP_FILL = 0.75


class ModelRunner:
    """Runs one forward pass per step over the paged KV cache."""

    step_threads: StepThreads | None = None  # CPU threads per step (engine hook; off: None)

    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_cache: KVCache,
        device: torch.device,
        max_model_len: int | None = None,
        tree_attention: bool | None = None,
    ):
        self.model = model
        self.kv_cache = kv_cache
        self.device = device
        config = model.config
        self.block_size = kv_cache.block_size
        nb = kv_cache.num_blocks
        kvh = config.num_key_value_heads
        # Row offsets of each KV head in the flat cache views (see attention.py).
        self._head_rows = torch.arange(kvh, dtype=torch.int64) * nb
        self._head_slots = (torch.arange(kvh, dtype=torch.int64) * nb * self.block_size).to(device)
        dtype = next(model.parameters()).dtype
        if prepack_supported(device, dtype):
            prepack_linears(model)
        self.workspace = Workspace(device, dtype)
        self.stager = HostStager(device)  # pinned buffers for the step's uploads
        elem = torch.empty(0, dtype=dtype).element_size()
        self._token_bytes = kvh * config.head_dim * elem  # keys of one token, all KV heads
        self.group_bytes = CPU_GROUP_BYTES if device.type == "cpu" else CUDA_GROUP_BYTES
        # A kernel that reads the paged cache in place (Triton, CUDA half precision only).
        self.paged_decode: PagedDecodeFn | None = None
        self.paged_prefill: PagedPrefillFn | None = None
        if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
            self.paged_decode = load_paged_decode(device, dtype)
            self.paged_prefill = load_paged_prefill(device, dtype)
            if model.fuse_for_cuda() and max_model_len:  # fused projections, Triton small ops
                model.model.rotary_emb.use_table(max_model_len, dtype)
        # Tree attention for decode steps whose rows share blocks (needs the paged kernel).
        self.tree: TreeDecoder | None = None
        if tree_attention or (tree_attention is None and self.paged_decode is not None):
            # The crossover thresholds are the H100's; the CPU path (tests) takes any saving.
            self.tree = TreeDecoder(config.num_attention_heads, kvh, self.block_size)
            if device.type != "cuda":  # the thresholds are the H100's; the CPU path is for tests
                self.tree.min_saved_tokens = self.tree.min_saved_per_row = 0
        self.graphs: DecodeGraphs | None = None
        self.lora: LoraManager | None = None  # the multi-LoRA hook (engine/lora), set by the engine
        # Filled by `execute` for prefill chunks of requests that want prompt logprobs:
        # (sequence, position of the chunk's first token, float32 logits of every row).
        self.prompt_logits: list[tuple[Sequence, int, torch.Tensor]] = []
        self._prompt_rows: list[tuple[Sequence, int, int, int]] = []  # seq, row, len, pos
        # Speculative draft heads read the last hidden state of every sampled row (hook).
        self.keep_hidden = False
        # Speculative verify chunks attended in one call per layer (CPU path; CUDA has the
        # paged-prefill kernel). False: one SDPA call per chunk, as any prefill chunk.
        self.batch_verify = True
        # Verify chunks replay the decode CUDA graphs as k + 1 decode rows (set from
        # speculative_config.cuda_graph_verify, on by default).
        self.graph_verify = False
        self.sample_hidden: torch.Tensor | None = None
        # Async scheduling (async_step.py): the previous step's sampled tokens on the device,
        # which input ids still in flight (negative placeholders) are taken from.
        self.token_fill: torch.Tensor | None = None
        # CPU: the compiled single-sequence decode step (cpu_decode.py), or None.
        self.cpu_decode: CompiledDecode | None = None

    def enable_cuda_graphs(self, max_batch: int, max_model_len: int) -> bool:
        """Capture decode steps as CUDA graphs (needs the paged decode kernel). The last
        physical cache block is the padding rows' scratch space."""
        if self.paged_decode is None or self.device.type != "cuda":
            return False
        width = -(-max_model_len // self.block_size)
        scratch = (self.kv_cache.num_blocks - 1) * self.block_size
        lora = self.lora if self.lora is not None and self.lora.supports_graphs else None
        graphs = DecodeGraphs(
            self.model,
            self.kv_cache,
            self.paged_decode,
            max_batch,
            width,
            scratch,
            tree=self.tree,
            lora=lora,
        )
        try:
            graphs.capture()
        except Exception as exc:  # capture is best effort: eager steps still work
            logger.warning("CUDA graph capture failed (%s); decoding eagerly", exc)
            return False
        self.graphs = graphs
        return True

    def _execute_graph(
        self, scheduled: list[ScheduledSeq]
    ) -> tuple[list[Sequence], torch.Tensor | None]:
        assert self.graphs is not None
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        tables: list[list[int]] = []
        lens: list[int] = []
        rows: list[int] = []
        seqs: list[Sequence] = []
        lora_slots: list[int] | None = [] if self.graphs.lora is not None else None
        bs = self.block_size
        for item in scheduled:  # a verify chunk of k + 1 tokens is k + 1 decode rows
            seq = item.seq
            table = seq.block_table
            for p in range(seq.num_computed_tokens, seq.num_computed_tokens + item.num_new_tokens):
                if item.samples:
                    rows.append(len(ids))
                    seqs.append(seq)
                ids.append(seq.token_ids[p])
                pos.append(p)
                slots.append(table[p // bs] * bs + p % bs)
                tables.append(table)
                lens.append(p + 1)
                if lora_slots is not None:
                    lora_slots.append(self.lora.row_slot(seq))  # type: ignore[union-attr]
        logits = self.graphs.run(ids, pos, slots, tables, lens, lora_slots, self.token_fill)
        if not rows:
            return seqs, None
        if len(rows) == len(ids):
            return seqs, logits.clone()
        return seqs, logits[self._to_device(torch.tensor(rows, dtype=torch.int64))]

    def _compiled_decode_fits(self, scheduled: list[ScheduledSeq]) -> bool:
        """True for a step the compiled CPU decode runs: one sequence, one new token that it
        samples, the base model, no hidden states kept for a draft head."""
        if len(scheduled) != 1 or self.keep_hidden:
            return False
        item = scheduled[0]
        seq = item.seq
        return (
            item.num_new_tokens == 1
            and item.samples
            and seq.num_computed_tokens > 0
            and not seq.lora_id
            and not seq.num_draft_tokens
        )

    def _execute_compiled(self, seq: Sequence) -> tuple[list[Sequence], torch.Tensor]:
        assert self.cpu_decode is not None
        p = seq.num_computed_tokens
        threads = self.step_threads
        if threads is not None:
            threads.fit(1)
        logits = self.cpu_decode.run(seq.token_ids[p], p, seq.block_table)
        if threads is not None:
            threads.restore()
        return [seq], logits

    def _verify_rows(self, item: ScheduledSeq) -> bool:
        """True for a speculative verify chunk a decode graph can replay as k + 1 decode rows
        (each attends to its own prefix; no graph keeps the hidden states a draft head reads)."""
        seq = item.seq
        return bool(
            seq.num_draft_tokens
            and seq.num_computed_tokens
            and item.num_new_tokens == 1 + seq.num_draft_tokens
            and self.graph_verify
            and not self.keep_hidden
            and seq.draft_parents is None  # a token tree's rows attend by mask, not in order
        )

    def _decode_row(self, seq: Sequence) -> tuple[int, int, int]:
        """A decoding sequence's input token, its position and the cache slot it writes."""
        p = seq.num_computed_tokens
        bs = self.block_size
        return seq.token_ids[p], p, seq.block_table[p // bs] * bs + p % bs

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        return self.stager.upload(t)  # through pinned memory on CUDA: no wait on the device

    def prepare(
        self, scheduled: list[ScheduledSeq]
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int], list[Sequence]]:
        """input ids, positions, attention metadata, rows to sample from and their seqs.

        Token order: single-token items (decodes) first, then multi-token prefill chunks. A
        chunk ending in speculative drafts samples from each draft position and the last one.
        """
        # Longest context first, so decode groups of similar lengths waste little padding.
        decodes = sorted(
            (s for s in scheduled if s.num_new_tokens == 1),
            key=lambda s: -s.seq.num_computed_tokens,
        )
        # Token-tree verify chunks last: the prefill kernel's chunks must be one run of rows.
        chunks = sorted(
            (s for s in scheduled if s.num_new_tokens > 1),
            key=lambda s: bool(s.seq.num_draft_tokens and s.seq.draft_parents is not None),
        )
        rows = StepRows()
        self._add_decodes(rows, decodes)
        self._add_chunks(rows, chunks, len(decodes))
        input_ids, positions, meta = self._upload(rows, len(decodes))
        if rows.verify_items:
            meta.verify = verify_hook(
                rows.verify_items, self.tree, self._head_rows, self.block_size, self.device,
                self.workspace,
            )  # fmt: skip
        if self.lora is not None:
            layout = [(s.seq, 1) for s in decodes] + [(s.seq, s.num_new_tokens) for s in chunks]
            meta.lora = self.lora.prepare(layout, meta.num_tokens)
        return input_ids, positions, meta, rows.sample_rows, rows.sample_seqs

    def _add_decodes(self, rows: StepRows, decodes: list[ScheduledSeq]) -> None:
        """One row per decoding sequence: its input token, position and cache slot."""
        for row, item in enumerate(decodes):
            seq = item.seq
            token, p, slot = self._decode_row(seq)
            rows.ids.append(token)
            rows.pos.append(p)
            rows.slots.append(slot)
            rows.ctx_lens.append(p + 1)
            rows.tables.append(seq.block_table)
            if _wants_prompt_logits(seq):  # a one-token chunk inside a prompt
                self._prompt_rows.append((seq, row, 1, p))
            if item.samples:
                rows.sample_rows.append(row)
                rows.sample_seqs.append(seq)

    def _add_chunks(self, rows: StepRows, chunks: list[ScheduledSeq], start: int) -> None:
        """Multi-token chunks: verify chunks (batched on the CPU; token trees everywhere),
        chunks for the paged-prefill kernel (positions made on the device), or gathered."""
        bs = self.block_size
        for item in chunks:
            seq, n = item.seq, item.num_new_tokens
            p0 = seq.num_computed_tokens
            rows.chunk_ids.append(seq.input_ids(p0, p0 + n))
            chunk = PrefillChunk(query_start=start, query_len=n, context_len=p0 + n)
            tree = seq.draft_parents if seq.num_draft_tokens else None
            if tree is not None or (
                self.batch_verify and self.device.type == "cpu" and seq.num_draft_tokens and p0
            ):  # verify chunks; a token tree's on every device (its nodes attend by mask)
                offsets = range(n) if tree is None else row_offsets(tree)
                rows.pos.extend(p0 + d for d in offsets)
                rows.slots.extend(chunk_slots(seq.block_table, p0, n, bs))
                rows.verify_items.append((start, n, p0, seq.block_table, tree))
            elif self.paged_prefill is not None:  # positions and slots are made on the device
                rows.kernel_chunks.append((start, n, p0 + n))
                rows.kernel_tables.append(seq.block_table[: -(-(p0 + n) // bs)])
            else:
                rows.pos.extend(range(p0, p0 + n))
                rows.slots.extend(chunk_slots(seq.block_table, p0, n, bs))
                if p0 > 0:
                    chunk.gather_index, chunk.mask = self._context_index(seq.block_table, p0, n)
            if not rows.verify_items or rows.verify_items[-1][0] != start:
                rows.prefills.append(chunk)
            if _wants_prompt_logits(seq):
                self._prompt_rows.append((seq, start, n, p0))
            if item.samples:  # speculative drafts: every draft position's row, then the bonus
                for row in range(start + n - 1 - seq.num_draft_tokens, start + n):
                    rows.sample_rows.append(row)
                    rows.sample_seqs.append(seq)
            start += n

    def _upload(
        self, rows: StepRows, nd: int
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """One host-to-device copy of the step's rows (token ids, the positions and cache
        slots made on the host, the prefill kernel's chunk table, the decode kernel's block
        tables and lengths); the input ids, positions and attention metadata."""
        bs = self.block_size
        packed = array("q", rows.ids)
        for part in rows.chunk_ids:
            packed += part
        tokens, on_host = len(packed), len(rows.pos)
        packed.fromlist(rows.pos)
        packed.fromlist(rows.slots)
        kernel_chunks = rows.kernel_chunks
        table_width = max(map(len, rows.kernel_tables), default=0)
        for i in range(3):
            packed.extend(c[i] for c in kernel_chunks)
        extend_with_tables(packed, rows.kernel_tables, table_width)
        decode_at, decode_width, ctx_lens = len(packed), 0, rows.ctx_lens
        plan = self.tree.plan(rows.tables, ctx_lens) if self.tree is not None and nd else None
        if self.paged_decode is not None and nd:
            decode_width = -(-max(ctx_lens) // bs)
            extend_with_tables(packed, rows.tables, decode_width)
            packed.fromlist(ctx_lens)
        dev = self.stager.upload(torch.frombuffer(packed, dtype=torch.int64))
        input_ids, positions = dev[:tokens], dev[tokens : tokens + on_host]
        if self.token_fill is not None:
            input_ids = fill_placeholders(input_ids, self.token_fill)
        slot_t = dev[tokens + on_host : tokens + 2 * on_host]
        batch: PrefillBatch | None = None
        if kernel_chunks:
            n_chunks, at = len(kernel_chunks), tokens + 2 * on_host
            batch = PrefillBatch(
                info=dev[at : at + 3 * n_chunks].view(3, n_chunks),
                tables=dev[at + 3 * n_chunks : decode_at].view(n_chunks, table_width),
                max_query_len=max(c[1] for c in kernel_chunks),
                fresh=all(c[1] == c[2] for c in kernel_chunks),
                first_position=kernel_chunks[0][2] - kernel_chunks[0][1],
            )
            kernel_end = nd + sum(c[1] for c in kernel_chunks)
            chunk_pos, chunk_slot = batch.positions_and_slots(nd, kernel_end, bs)
            if on_host:  # rows: decodes, the kernel's chunks, then token-tree chunks
                positions = torch.cat([positions[:nd], chunk_pos, positions[nd:]])
                slot_t = torch.cat([slot_t[:nd], chunk_slot, slot_t[nd:]])
            else:
                positions, slot_t = chunk_pos, chunk_slot
        meta = AttentionMetadata(
            num_tokens=tokens,
            write_index=(self._head_slots[:, None] + slot_t[None, :]).flatten(),
            num_decodes=nd,
            prefills=rows.prefills,
            workspace=self.workspace,
            prefill_kernel=self.paged_prefill if batch is not None else None,
            prefill_batch=batch,
        )
        if decode_width:
            lens_at = decode_at + nd * decode_width
            meta.decode_kernel = self.paged_decode
            meta.decode_tables = dev[decode_at:lens_at].view(nd, decode_width).to(torch.int32)
            meta.decode_lens = dev[lens_at : lens_at + nd].to(torch.int32)
            ctx_lens = []  # no gather groups
        if plan is not None and self.tree is not None:
            meta.decode_kernel = self.tree.eager(plan, self.device)
            ctx_lens = []
        start = 0
        for count in self._group_sizes(ctx_lens):
            meta.decode_groups.append(
                self._decode_group(
                    start, rows.tables[start : start + count], ctx_lens[start : start + count]
                )
            )
            start += count
        return input_ids, positions, meta

    def _context_index(
        self, table: list[int], p0: int, n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather rows and the offset-causal mask of a chunk after `p0` cached tokens."""
        bs = self.block_size
        num_blocks = -(-(p0 + n) // bs)
        table_t = torch.tensor(table[:num_blocks], dtype=torch.int64)
        index = (self._head_rows[:, None] + table_t[None, :]).flatten()
        keys = torch.arange(num_blocks * bs, dtype=torch.int64)
        chunk_pos = torch.arange(p0, p0 + n, dtype=torch.int64)
        return self._to_device(index), self._to_device(keys[None, :] <= chunk_pos[:, None])

    def _group_sizes(self, ctx_lens: list[int]) -> list[int]:
        """Split decode rows (sorted longest first) into attention groups."""
        return group_sizes(
            ctx_lens, self.block_size, self._token_bytes, self.group_bytes, MIN_GROUP_FILL
        )

    def _decode_group(self, start: int, tables: list[list[int]], lens: list[int]) -> DecodeGroup:
        bs = self.block_size
        max_blocks = -(-max(lens) // bs)
        padded = [t[:max_blocks] + [0] * (max_blocks - len(t)) for t in tables]
        table_t = torch.tensor(padded, dtype=torch.int64)
        index = (table_t[:, None, :] + self._head_rows[None, :, None]).flatten()
        keys = torch.arange(max_blocks * bs, dtype=torch.int64)
        lens_t = torch.tensor(lens, dtype=torch.int64)
        mask = (keys[None, :] < lens_t[:, None])[:, None, None, :]
        bias = None
        if self.device.type == "cpu":
            bias = torch.zeros(mask.shape, dtype=torch.float32).masked_fill_(~mask, float("-inf"))
        return DecodeGroup(start, len(lens), self._to_device(index), self._to_device(mask), bias)

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> tuple[list[Sequence], torch.Tensor | None]:
        """Run the step; returns the sequences that sample and their float32 logits."""
        self.kv_cache.copy_blocks(out.block_copies)
        self.prompt_logits, self._prompt_rows = [], []
        self.sample_hidden = None
        graphs = self.graphs
        if (
            graphs is not None
            and out.num_tokens <= graphs.max_batch
            and all(s.num_new_tokens == 1 or self._verify_rows(s) for s in out.scheduled)
            and not any(_wants_prompt_logits(s.seq) for s in out.scheduled)
            # adapters replay a graph only when it was captured with the LoRA kernels
            and (graphs.lora is not None or not any(s.seq.lora_id for s in out.scheduled))
        ):
            return self._execute_graph(out.scheduled)
        if self.cpu_decode is not None and self._compiled_decode_fits(out.scheduled):
            return self._execute_compiled(out.scheduled[0].seq)
        input_ids, positions, meta, rows, seqs = self.prepare(out.scheduled)
        threads = self.step_threads  # CPU: threads per step size (cpu_threads.py)
        if threads is not None:
            threads.fit(input_ids.shape[0])
        hidden = self.model(input_ids, positions, meta, self.kv_cache.layers)
        if threads is not None:
            threads.restore()
        for seq, row, n, p0 in self._prompt_rows:
            chunk_logits = self.model.compute_logits(hidden[row : row + n])
            self.prompt_logits.append((seq, p0, chunk_logits))
        if not rows:
            return seqs, None
        index = self._to_device(torch.tensor(rows, dtype=torch.int64))
        sampled = hidden.index_select(0, index)
        if self.keep_hidden:
            self.sample_hidden = sampled
        return seqs, self.model.compute_logits(sampled)


def _wants_prompt_logits(seq: Sequence) -> bool:
    """True while a request that asked for prompt logprobs is still computing its prompt."""
    return (
        seq.params.prompt_logprobs is not None and seq.num_computed_tokens < seq.num_prompt_tokens
    )
