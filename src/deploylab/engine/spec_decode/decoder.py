"""`SpecDecoder`: the engine's speculative-decoding hook.

Per step, around the ordinary continuous-batching step:

1. `propose` (before scheduling): each running sequence that decodes gets up to k draft
   tokens appended to `token_ids` (`seq.num_draft_tokens` says how many are drafts), so the
   scheduler and model runner see one multi-token chunk after cached context.
2. `reconcile` (after scheduling): drafts the batch could not hold (token budget, preempted
   or unscheduled sequences) are dropped again.
3. `verify` (after the forward pass): the drafts are removed from `token_ids`, checked
   against the target's logits at every draft position, and the accepted tokens plus one
   target token are returned for the engine to append; the scheduled token count shrinks to
   the tokens whose keys and values are valid.
4. `rollback` (after `Scheduler.update_after_step`): blocks that hold only rejected tokens
   are freed. Blocks are offered to the prefix cache only up to the valid tokens, so no
   rejected token is ever hashed.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from deploylab.engine.block_manager import BlockManager
from deploylab.engine.scheduler import Scheduler, SchedulerOutput
from deploylab.engine.sequence import Sequence
from deploylab.engine.spec_decode.config import SpeculativeConfig
from deploylab.engine.spec_decode.cost import CostModel, calibrate, prior_model
from deploylab.engine.spec_decode.judge import load_judge
from deploylab.engine.spec_decode.policy import AdaptivePolicy
from deploylab.engine.spec_decode.proposer import Proposer, make_proposer
from deploylab.engine.spec_decode.step_verify import SpecStats, VerifyStep

if TYPE_CHECKING:
    from deploylab.engine.model_runner import ModelRunner


class SpecDecoder(VerifyStep):
    """Proposes drafts for running sequences and verifies them in the same target pass."""

    def __init__(
        self,
        config: SpeculativeConfig,
        scheduler: Scheduler,
        max_model_len: int,
        proposer: Proposer | None = None,
        runner: ModelRunner | None = None,
    ) -> None:
        self.config = config
        # Lossy speculative cascades (opt-in): (deferral rule, lenience), else None.
        self.cascade: tuple[str, float] | None = None
        if config.cascade_rule is not None:
            self.cascade = (config.cascade_rule, config.cascade_alpha)
        self.scheduler = scheduler
        self.block_manager: BlockManager = scheduler.block_manager
        self.max_model_len = max_model_len
        self.runner = runner
        self.judge = load_judge(config, runner)  # lossy judge decoding (opt-in), else None
        self.proposer: Proposer = proposer or make_proposer(config, runner)
        if runner is not None:
            runner.graph_verify = config.cuda_graph_verify
        self._hidden: torch.Tensor | None = None  # this step's sampled rows' hidden states
        self._paths: list[tuple[Sequence, list[int]]] = []  # kept tree paths of this step
        self.stats = SpecStats(accepted_per_position=[0] * config.num_speculative_tokens)
        self.drafting: list[Sequence] = []  # sequences holding drafts this step
        self.dropped: list[Sequence] = []  # drafts taken back before the step (drop_all)
        self.policy: AdaptivePolicy | None = None  # the adaptive k policy (config.adaptive)
        if config.adaptive:
            self.policy = AdaptivePolicy(self._cost_model(runner))
        self._timing: tuple[float, int, int] | None = None  # last decode step: t0, tokens, m
        self._t0 = 0.0
        self._steps = 0

    def _cost_model(self, runner: ModelRunner | None) -> CostModel:
        """Start-up calibration on the engine's runner (empty cache); without a runner, a
        model in which drafts cost nothing (always full k)."""
        if runner is None:
            return CostModel.from_coefficients(1.0, 0.0, 0.0)
        bm = self.block_manager
        k = self.config.num_speculative_tokens
        with torch.inference_mode():
            obs = calibrate(runner, bm.num_free_blocks, k, self.scheduler.max_num_seqs)
        return prior_model(obs)

    def num_tokens_for(self, seq: Sequence) -> int:
        """How many drafts `seq` may get now: its request's k (engine default when unset),
        never past max_tokens or the context, 0 with penalties (they depend on the drafts)."""
        params = seq.params
        k = params.num_speculative_tokens
        k = self.config.num_speculative_tokens if k is None else k
        if params.repetition_penalty != 1.0 or params.presence_penalty or params.frequency_penalty:
            return 0
        if seq.structured is not None or params.n > 1:  # grammar masks, forks: not verified here
            return 0
        left = self.max_model_len - seq.num_tokens - 1
        if params.max_tokens is not None:
            left = min(left, params.max_tokens - seq.num_output_tokens - 1)
        return max(0, min(k, left, self.config.num_speculative_tokens))

    def _block_room(self, seqs: list[Sequence], ks: list[int]) -> list[int]:
        """Cut ks so that the drafts' extra blocks fit in the free pool (never preempt for a
        guess), earliest arrivals first."""
        bm = self.block_manager
        bs = bm.block_size
        room = bm.num_free_blocks - self.scheduler.watermark_blocks
        room -= sum(max(0, -(-s.num_tokens // bs) - len(s.block_table)) for s in seqs)
        out = []
        for seq, k in zip(seqs, ks, strict=True):
            base = max(-(-seq.num_tokens // bs), len(seq.block_table))
            while k and -(-(seq.num_tokens + k) // bs) - base > room:
                k -= 1
            room -= max(0, -(-(seq.num_tokens + k) // bs) - base)
            out.append(k)
        return out

    def _observe_step(self) -> None:
        """Feed the previous step's wall time (a pure decode step, not idle) to the cost model."""
        now = time.perf_counter()
        self._t0, last, self._timing = now, self._timing, None
        if self.policy is None or last is None:
            return
        self._steps += 1
        if self._steps % 256 == 0:
            running = {(s.request_id, s.index) for s in self.scheduler.running}
            self.policy.tracker.forget_except(running)
        t0, tokens, drafting = last
        cost = self.policy.cost
        if now - t0 < 20 * cost.cost(tokens, drafting):  # longer: the engine sat idle
            cost.observe(tokens, drafting, now - t0)

    def propose(self) -> None:
        """Append drafts to the running sequences that decode this step."""
        self._observe_step()
        seqs = [s for s in self.scheduler.running if s.num_tokens - s.num_computed_tokens == 1]
        ks = self._block_room(seqs, [self.num_tokens_for(s) for s in seqs])
        self.drafting = []
        if not any(ks):
            return
        policy = self.policy
        keys = [(s.request_id, s.index) for s in seqs]
        if policy is not None and not self.proposer.free_to_propose:
            ks = policy.choose(keys, ks, len(seqs))  # pay only for the drafts worth it
        elif policy is not None and not any(policy.choose(keys, ks, len(seqs))):
            return  # no draft pays even at full length, so none of fewer tokens would: skip
        width = self.config.tree_width
        if width > 1:  # token trees: (tokens, parents) per sequence, topological order
            trees = self.proposer.propose_tree(seqs, ks, width)
            proposals, parents = [t for t, _ in trees], [a for _, a in trees]
        else:
            proposals, parents = self.proposer.propose(seqs, ks), None
        if policy is not None and self.proposer.free_to_propose:
            ks = policy.choose(keys, [len(d) for d in proposals], len(seqs))
        for i, (seq, k, drafts) in enumerate(zip(seqs, ks, proposals, strict=True)):
            if drafts and k:
                seq.token_ids.extend(drafts[:k])
                seq.num_draft_tokens = len(drafts[:k])
                if parents is not None:  # a prefix of a topological order is still a tree
                    seq.draft_parents = parents[i][:k]
                self.drafting.append(seq)

    def reconcile(self, out: SchedulerOutput) -> None:
        """Keep only the drafts the scheduled batch computes (none in a step that forks)."""
        scheduled = {id(item.seq): item.num_new_tokens for item in out.scheduled}
        kept = []
        for seq in self.drafting:
            n = scheduled.get(id(seq), 0)
            keep = max(0, n - 1) if seq.num_computed_tokens else 0  # preempted: recomputes
            if keep < seq.num_draft_tokens:
                del seq.token_ids[len(seq.token_ids) - seq.num_draft_tokens + keep :]
                seq.num_draft_tokens = keep
                if seq.draft_parents is not None:
                    seq.draft_parents = seq.draft_parents[:keep] or None
            if keep:
                kept.append(seq)
        self.drafting = kept
        if kept and any(item.samples and item.seq.pending_forks for item in out.scheduled):
            self.drop_all(out)  # a step that forks n samples runs without drafts
        if all(
            item.seq.num_computed_tokens and item.num_new_tokens == 1 + item.seq.num_draft_tokens
            for item in out.scheduled
        ):  # a pure decode step: time it for the cost model
            self._timing = (self._t0, out.num_tokens, len(self.drafting))

    def after_forward(self, seqs: list[Sequence]) -> None:
        """Hand the sampled rows' hidden states to a proposer that drafts from them (rows of
        a step without drafts now; of a verifying step once `verify` knows what was kept)."""
        observe = getattr(self.proposer, "observe", None)
        hidden = self.runner.sample_hidden if self.runner is not None else None
        self._hidden = hidden if observe is not None else None
        if observe is not None and hidden is not None and not self.drafting:
            observe(seqs, [s.num_tokens for s in seqs], hidden)

    def drop_all(self, out: SchedulerOutput) -> None:
        """Take back every draft of this step before it runs (the step then decodes one token
        per sequence, as without speculation); `release_dropped` frees their blocks after."""
        drafting = {id(s) for s in self.drafting}
        for item in out.scheduled:
            seq = item.seq
            k = seq.num_draft_tokens
            if id(seq) in drafting and k:
                self._take_drafts(seq)
                item.num_new_tokens -= k
        self.dropped, self.drafting = self.drafting, []

    def release_dropped(self) -> None:
        """After a step whose drafts were dropped: free the blocks only the drafts needed."""
        for seq in self.dropped:
            if not seq.is_finished:
                self.block_manager.trim(seq)
        self.dropped = []

    def rollback(self, out: SchedulerOutput) -> None:
        """Free the blocks that hold only rejected draft tokens."""
        for seq in self.drafting:
            if not seq.is_finished:
                self.block_manager.trim(seq)
        self.drafting = []
