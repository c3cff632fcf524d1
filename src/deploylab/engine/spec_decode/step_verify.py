"""The verify half of `SpecDecoder` (after the forward pass): check every drafting
sequence's drafts against the target's logits — greedy chains and trees batched (with the
judge's or a cascade's verdicts for greedy chains), sampled requests and greedy ones with
logprobs one sequence at a time — move kept tree paths' KV into place, and count what was
accepted."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from deploylab.engine.block_manager import BlockManager
from deploylab.engine.outputs import TokenLogprobs
from deploylab.engine.sampler import Sampler
from deploylab.engine.scheduler import SchedulerOutput
from deploylab.engine.sequence import Sequence
from deploylab.engine.spec_decode.greedy_batch import greedy_best, greedy_cascade, greedy_outcome
from deploylab.engine.spec_decode.judge import Judge
from deploylab.engine.spec_decode.policy import AdaptivePolicy
from deploylab.engine.spec_decode.tree_drafts import path_slots
from deploylab.engine.spec_decode.verify import verify_drafts, verify_tree_drafts

if TYPE_CHECKING:
    from deploylab.engine.model_runner import ModelRunner

StepResult = tuple[Sequence, list[int], list[TokenLogprobs | None]]


@dataclass
class SpecStats:
    """Counters since start (vLLM's spec_decode metrics)."""

    num_drafts: int = 0  # sequence-steps that verified at least one draft token
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_position: list[int] = field(default_factory=list)


class VerifyStep:
    """Verification of a step's drafts (mixed into `SpecDecoder`, which sets the fields)."""

    runner: ModelRunner | None
    block_manager: BlockManager
    judge: Judge | None
    cascade: tuple[str, float] | None
    proposer: Any
    policy: AdaptivePolicy | None
    stats: SpecStats
    drafting: list[Sequence]
    _hidden: torch.Tensor | None
    _paths: list[tuple[Sequence, list[int]]]

    def verify(
        self,
        out: SchedulerOutput,
        seqs: list[Sequence],
        logits: torch.Tensor | None,
        sampler: Sampler,
    ) -> list[StepResult]:
        """Tokens each sampling sequence emits this step (rows of a drafting sequence are
        consecutive in `seqs`/`logits`); the other rows go through the sampler as usual."""
        if logits is None:
            return []
        plain_rows: list[int] = []
        plain: list[Sequence] = []
        greedy: list[tuple[Sequence, int]] = []  # greedy drafting sequences, first row
        self._rows_of: dict[int, int] = {}
        self._paths = []
        self._last_row: dict[int, int] = {}  # tree: chunk row that produced the last token
        results: dict[int, StepResult] = {}
        row = 0
        while row < len(seqs):
            seq = seqs[row]
            k = seq.num_draft_tokens
            if not k:
                plain_rows.append(row)
                plain.append(seq)
                row += 1
                continue
            if seq.params.greedy and seq.params.logprobs is None:
                greedy.append((seq, row))
            elif seq.draft_parents is not None:
                results[id(seq)] = self._verify_tree_one(seq, logits[row : row + k + 1], sampler)
            else:
                judged = self._judged(row, k)
                results[id(seq)] = self._verify_one(seq, logits[row : row + k + 1], sampler, judged)
            self._rows_of[id(seq)] = k + 1
            row += k + 1
        if greedy:
            results.update(self._verify_greedy(greedy, logits, sampler))
        if plain:
            index = torch.tensor(plain_rows, dtype=torch.int64, device=logits.device)
            tokens, lps = sampler(logits.index_select(0, index), plain)
            for seq, token, lp in zip(plain, tokens, lps, strict=True):
                results[id(seq)] = (seq, [token], [lp])
        self._move_paths()
        self._observe_verified(seqs, results)
        drafting = {id(s) for s in self.drafting}
        for item in out.scheduled:  # valid keys and values: the input token + accepted drafts
            if id(item.seq) in drafting:
                item.num_new_tokens = len(results[id(item.seq)][1])
        return [results[id(seq)] for seq in dict.fromkeys(seqs)]

    def _verify_greedy(
        self, spans: list[tuple[Sequence, int]], logits: torch.Tensor, sampler: Sampler
    ) -> dict[int, StepResult]:
        """Greedy verification of every greedy drafting sequence at once (`greedy_verify`'s
        rule on the float32 logits, as the sampler's argmax; a lossy rule's verdicts too):
        one argmax, one device sync."""
        eos = sampler.eos_token_ids
        if self.cascade is not None:  # speculative cascades: the deferral rule per row
            best, passed = greedy_cascade(spans, logits, eos, *self.cascade)
        else:
            best = greedy_best(spans, logits, eos)
            passed = self._judged_rows(spans, eos)  # judge decoding
        results: dict[int, StepResult] = {}
        at = 0
        for seq, _ in spans:
            k, tree = seq.num_draft_tokens, seq.draft_parents
            drafts = self._take_drafts(seq)
            rows = slice(at, at + k + 1)
            tokens, path = greedy_outcome(drafts, tree, best[rows], passed[rows])
            if path is not None:
                self._keep_path(seq, path)
            self._record(seq, k, len(tokens) - 1)
            results[id(seq)] = (seq, tokens, [None] * len(tokens))
            at += k + 1
        return results

    def _observe_verified(self, seqs: list[Sequence], results: dict[int, StepResult]) -> None:
        """After verification: each sequence's hidden row that produced its last token."""
        hidden = self._hidden
        observe = getattr(self.proposer, "observe", None)
        if hidden is None or observe is None:
            return
        rows, keep, positions = [], [], []
        row = 0
        while row < len(seqs):
            seq = seqs[row]
            n = len(results[id(seq)][1])  # tokens this step emits: row + n - 1 made the last
            rows.append(row + self._last_row.get(id(seq), n - 1))  # (a tree: its path's end)
            keep.append(seq)
            positions.append(seq.num_tokens + n - 1)
            row += self._rows_of.get(id(seq), 1)
        index = torch.tensor(rows, dtype=torch.int64, device=hidden.device)
        observe(keep, positions, hidden.index_select(0, index))

    def _judged_rows(self, spans: list[tuple[Sequence, int]], eos: list[int]) -> list[bool]:
        """Per verify row of `spans`: whether the judge passes the draft that row scores (never
        a stop token below min_tokens, which the target may not emit there)."""
        hidden = self.runner.sample_hidden if self.runner is not None else None
        if self.judge is None or hidden is None:
            return [False] * sum(seq.num_draft_tokens + 1 for seq, _ in spans)
        out = self.judge.span_verdicts(hidden, [(f, s.num_draft_tokens) for s, f in spans])
        at = 0
        for seq, _ in spans:
            params, k = seq.params, seq.num_draft_tokens
            stops = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos))
            n_out = seq.num_output_tokens - k
            for j, draft in enumerate(seq.token_ids[-k:]):
                if n_out + j < params.min_tokens and draft in stops:
                    out[at + j] = False
            at += k + 1
        return out

    def _judged(self, row: int, k: int) -> torch.Tensor | None:
        """The judge's verdicts on the k drafts whose rows follow `row`, or None."""
        hidden = self.runner.sample_hidden if self.runner is not None else None
        if self.judge is None or hidden is None:
            return None
        return self.judge.verdicts(hidden[row + 1 : row + k + 1])

    def _verify_one(
        self,
        seq: Sequence,
        logits: torch.Tensor,
        sampler: Sampler,
        judged: torch.Tensor | None = None,
    ) -> StepResult:
        k = seq.num_draft_tokens
        drafts = self._take_drafts(seq)
        banned, gen = _stops_and_generator(seq, sampler)
        result = verify_drafts(logits, drafts, seq, banned, gen, self.cascade, judged)
        self._record(seq, k, result.num_accepted)
        return seq, result.tokens, result.logprobs

    def _verify_tree_one(self, seq: Sequence, logits: torch.Tensor, sampler: Sampler) -> StepResult:
        """A token tree of a sampled request, or of a greedy one with logprobs."""
        k, parents = seq.num_draft_tokens, seq.draft_parents
        assert parents is not None
        drafts = self._take_drafts(seq)
        banned, gen = _stops_and_generator(seq, sampler)
        result, path = verify_tree_drafts(logits, drafts, parents, seq, banned, gen)
        self._keep_path(seq, path)
        self._record(seq, k, result.num_accepted)
        return seq, result.tokens, result.logprobs

    def _keep_path(self, seq: Sequence, path: list[int]) -> None:
        """Note a verified tree's kept path: its KV moves after verification, and the row
        after its last node produced the sequence's last token."""
        self._paths.append((seq, path))
        self._last_row[id(seq)] = path[-1] + 1 if path else 0

    @staticmethod
    def _take_drafts(seq: Sequence) -> list[int]:
        """Remove the step's drafts from the sequence (tokens, count, tree); return them."""
        k = seq.num_draft_tokens
        drafts = seq.token_ids[-k:] if k else []
        if k:
            del seq.token_ids[-k:]
        seq.num_draft_tokens = 0
        seq.draft_parents = None
        return drafts

    def _move_paths(self) -> None:
        """Move each kept tree path's KV to the slots a chain would have used (one copy per
        step for every sequence), so the cache holds the emitted tokens in order."""
        paths, self._paths = self._paths, []
        if self.runner is not None and paths:
            src, dst = path_slots(paths, self.block_manager.block_size)
            self.runner.kv_cache.move_slots(src, dst)

    def _record(self, seq: Sequence, k: int, accepted: int) -> None:
        """Count one verification (metrics and the policy's per-request acceptance)."""
        if self.policy is not None:
            self.policy.tracker.record((seq.request_id, seq.index), k, accepted)
        st = self.stats
        st.num_drafts += 1
        st.num_draft_tokens += k
        st.num_accepted_tokens += accepted
        for i in range(accepted):
            st.accepted_per_position[i] += 1


def _stops_and_generator(seq: Sequence, sampler: Sampler) -> tuple[list[int], torch.Generator]:
    """The tokens banned below min_tokens (stop ids, EOS unless ignored) and the generator a
    sequence samples with (its own when seeded)."""
    params = seq.params
    banned = list(params.stop_token_ids)
    if not params.ignore_eos:
        banned += sampler.eos_token_ids
    gen = sampler._seq_generator(seq) if params.seed is not None else sampler.generator
    return banned, gen
