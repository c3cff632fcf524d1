"""CUDA graphs for decode-only steps.

A decode step of B sequences launches hundreds of small kernels; replaying a captured graph
removes the per-launch CPU cost. Graphs are captured for a few batch sizes (buckets); a step
of n decodes replays the smallest bucket >= n with the extra rows padded: they read block 0
and write their key/value to a scratch block that the block manager never hands out.

Needs the in-place paged decode kernel (no data-dependent gather shapes). Static inputs per
bucket: token ids, positions, cache slots, padded block tables of a fixed width (the context
length in blocks) and context lengths; the output is the bucket's logits.

Steps whose rows share KV blocks (tree attention, see `triton_tree.py`) replay a second graph
of the bucket, captured the first time it is needed, whose attention reads a fixed-capacity
plan buffer instead of the block tables; a plan over the capacity runs the plain graph.
"""

from __future__ import annotations

import logging
from array import array
from dataclasses import dataclass
from typing import Any

import torch

from deploylab.engine.async_step import HostStager, fill_placeholders
from deploylab.engine.attention import AttentionMetadata
from deploylab.engine.block_manager import extend_with_tables
from deploylab.engine.kv_cache import KVCache
from deploylab.engine.lora.ops import slots_and_order
from deploylab.engine.models.llama import LlamaForCausalLM
from deploylab.engine.tree_attention import TreePlan
from deploylab.engine.triton_attention import PagedDecodeFn
from deploylab.engine.triton_tree import StaticTreePlan, TreeDecoder

logger = logging.getLogger(__name__)

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)


@dataclass
class _Graph:
    size: int
    ids: torch.Tensor
    pos: torch.Tensor
    slots: torch.Tensor
    tables: torch.Tensor
    lens: torch.Tensor
    logits: torch.Tensor | None = None
    graph: torch.cuda.CUDAGraph | None = None
    tree: StaticTreePlan | None = None  # set for a tree-attention graph
    # Each row's LoRA slot (int32, -1 = base), then the rows sorted by slot: [2 * size].
    lora_slots: torch.Tensor | None = None


class DecodeGraphs:
    """Captured decode steps for batch sizes up to `max_batch`."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_cache: KVCache,
        kernel: PagedDecodeFn,
        max_batch: int,
        width: int,
        scratch_slot: int,
        tree: TreeDecoder | None = None,
        lora: Any = None,
    ) -> None:
        self.model = model
        self.lora = lora  # engine/lora's manager: `graph_batch(slots)` per captured size
        self.kv_cache = kv_cache
        self.kernel = kernel
        self.width = width
        self.scratch_slot = scratch_slot
        self.device = kv_cache.layers[0][0].device
        kvh, nb, bs = kv_cache.layers[0][0].shape[:3]
        self.block_size = bs
        self.head_slots = torch.arange(kvh, device=self.device, dtype=torch.int64) * nb * bs
        self.sizes = sorted({b for b in BUCKETS if b < max_batch} | {max_batch})
        self.graphs: dict[int, _Graph] = {}
        self.tree = tree
        self.tree_graphs: dict[int, _Graph] = {}
        self.stager = HostStager(self.device)  # pinned buffers for the replays' inputs

    @property
    def max_batch(self) -> int:
        """The largest captured batch."""
        return self.sizes[-1]

    def _new(self, size: int) -> _Graph:
        dev = self.device
        return _Graph(
            size=size,
            ids=torch.zeros(size, dtype=torch.int64, device=dev),
            pos=torch.zeros(size, dtype=torch.int64, device=dev),
            slots=torch.full((size,), self.scratch_slot, dtype=torch.int64, device=dev),
            tables=torch.zeros(size, self.width, dtype=torch.int32, device=dev),
            lens=torch.ones(size, dtype=torch.int32, device=dev),
            lora_slots=(  # base-model rows while capturing: the kernels read the order
                torch.tensor(slots_and_order([-1] * size), dtype=torch.int32, device=dev)
                if self.lora
                else None
            ),
        )

    def _forward(self, g: _Graph) -> torch.Tensor:
        meta = AttentionMetadata(
            num_tokens=g.size,
            write_index=(self.head_slots[:, None] + g.slots[None, :]).reshape(-1),
            num_decodes=g.size,
            decode_kernel=g.tree or self.kernel,
            decode_tables=g.tables,
            decode_lens=g.lens,
        )
        if g.lora_slots is not None:
            meta.lora = self.lora.graph_batch(g.lora_slots)
        hidden = self.model(g.ids, g.pos, meta, self.kv_cache.layers)
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first so the smaller ones share its memory pool."""
        pool = None
        for size in reversed(self.sizes):
            g = self._new(size)
            pool = self._capture_one(g, pool)
            self.graphs[size] = g
        torch.cuda.synchronize(self.device)
        logger.info("captured CUDA graphs for decode batches %s", self.sizes)

    def _capture_one(self, g: _Graph, pool: Any) -> Any:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward(g)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            g.logits = self._forward(g)
        g.graph = graph
        return graph.pool()

    @torch.inference_mode()
    def _tree_graph(self, size: int) -> _Graph:
        """The bucket's tree-attention graph, captured on first use."""
        g = self.tree_graphs.get(size)
        if g is None:
            assert self.tree is not None
            g = self._new(size)
            g.tree = StaticTreePlan(size, self.width, self.tree.rows_per_task, self.device)
            self._capture_one(g, None)
            torch.cuda.synchronize(self.device)
            self.tree_graphs[size] = g
            logger.info("captured a tree-attention CUDA graph for decode batch %d", size)
        return g

    def run(
        self,
        ids: list[int],
        pos: list[int],
        slots: list[int],
        tables: list[list[int]],
        lens: list[int],
        lora_slots: list[int] | None = None,
        token_fill: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Replay for n = len(ids) decodes; returns their logits `[n, vocab]`. `lora_slots`:
        each row's LoRA slot (-1 = base) when captured with LoRA; `token_fill`: the tokens
        that negative ids stand for (async scheduling)."""
        n = len(ids)
        size = next(s for s in self.sizes if s >= n)
        g = self.graphs[size]
        plan = self.tree.plan(tables, lens) if self.tree is not None else None
        if plan is not None:
            g = self._with_tree_plan(size, plan) or g
        pad = size - n
        # One host-to-device copy of what this step reads. Of the tables only the n real
        # rows and the columns their contexts reach: the kernel reads no further, and the
        # padding rows (context 1) read column 0, a valid block left from any earlier step.
        width = -(-max(lens) // self.block_size)
        packed = array("q")
        for values, filler in ((ids, 0), (pos, 0), (slots, self.scratch_slot), (lens, 1)):
            packed.fromlist(values)
            packed.fromlist([filler] * pad)
        if g.lora_slots is not None:
            packed.fromlist(slots_and_order((lora_slots or [-1] * n) + [-1] * pad))
        extend_with_tables(packed, tables, width)
        dev = self.stager.upload(torch.frombuffer(packed, dtype=torch.int64))
        at = 4 * size  # the tables follow (after the LoRA slots and order, if any)
        if g.lora_slots is not None:
            g.lora_slots.copy_(dev[at : at + 2 * size])
            at += 2 * size
        ids_dev = dev[:size]
        g.ids.copy_(ids_dev if token_fill is None else fill_placeholders(ids_dev, token_fill))
        g.pos.copy_(dev[size : 2 * size])
        g.slots.copy_(dev[2 * size : 3 * size])
        g.lens.copy_(dev[3 * size : 4 * size])
        g.tables[:n, :width].copy_(dev[at:].view(n, width))
        return self._replay(g)[:n]

    def _with_tree_plan(self, size: int, plan: TreePlan) -> _Graph | None:
        """The tree graph of the bucket with `plan` loaded, or None if it does not fit."""
        assert self.tree is not None
        g = self._tree_graph(size)
        assert g.tree is not None
        if not g.tree.fits(plan):
            return None
        g.tree.load(plan)
        self.tree.steps += 1
        return g

    def _replay(self, g: _Graph) -> torch.Tensor:
        assert g.graph is not None and g.logits is not None
        g.graph.replay()
        return g.logits
