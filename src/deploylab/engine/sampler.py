"""`Sampler`: logits -> next tokens, with penalties, truncation, seeds and logprobs.

Order per row: logprobs are taken from the raw distribution; then repetition, presence and
frequency penalties; stop tokens are banned until `min_tokens`; a request with structured
output masks the tokens its grammar forbids (`structured.py`); greedy rows take the argmax;
the others are divided by their temperature, cut by top-k, top-p and min-p, and sampled.

Sampling uses the exponential race (argmax of p / E with E ~ Exp(1)), which draws exactly one
vector of V random numbers per row and step. A seeded request draws them from its own
generator, so its tokens do not depend on which other requests share the batch.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

import torch

from deploylab.engine.outputs import TokenLogprobs
from deploylab.engine.sampling_params import SamplingParams
from deploylab.engine.sequence import Sequence


def apply_penalties(row: torch.Tensor, seq: Sequence, params: SamplingParams) -> None:
    """In place on one row of logits: repetition penalty (HF style, over prompt and output)
    and OpenAI-style presence/frequency penalties (over the output)."""
    device = row.device
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(seq.token_ids)), dtype=torch.int64, device=device)
        values = row[seen]
        penalty = params.repetition_penalty
        row[seen] = torch.where(values > 0, values / penalty, values * penalty)
    if params.presence_penalty or params.frequency_penalty:
        out = torch.tensor(seq.output_token_ids, dtype=torch.int64, device=device)
        counts = torch.bincount(out, minlength=row.shape[0]).to(row.dtype)
        row -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0)


def apply_top_k_top_p(logits: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    """Mask (to -inf) everything outside each row's top-k and top-p nucleus."""
    vocab = logits.shape[-1]
    ks = [min(k, vocab) if k > 0 else vocab for k in top_k]
    if all(p >= 1.0 for p in top_p):
        kmax = min(max(ks), vocab)
        top_vals = logits.topk(kmax, dim=-1).values
        idx = torch.tensor([min(k, vocab) - 1 for k in ks], device=logits.device)
        kth = top_vals.gather(1, idx[:, None])
        return logits.masked_fill(logits < kth, float("-inf"))
    # On CUDA the sort is cheap, and checking the candidates' mass would wait for the device.
    fast = _nucleus_of_candidates(logits, ks, top_p) if logits.device.type == "cpu" else None
    if fast is None:
        return _sorted_top_k_top_p(logits, ks, top_p)
    out, short = fast
    if short:  # rows whose nucleus reaches past the candidates: the full sort
        rows = torch.tensor(short, device=logits.device)
        full = _sorted_top_k_top_p(
            logits.index_select(0, rows), [ks[r] for r in short], [top_p[r] for r in short]
        )
        out.index_copy_(0, rows, full)
    return out


def _sorted_top_k_top_p(logits: torch.Tensor, ks: list[int], top_p: list[float]) -> torch.Tensor:
    """`apply_top_k_top_p` by sorting each row (`ks`: top-k already clamped to the vocab)."""
    vocab = logits.shape[-1]
    sorted_vals, sorted_idx = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device)
    k_t = torch.tensor(ks, device=logits.device)
    remove = ranks[None, :] >= k_t[:, None]
    sorted_vals = sorted_vals.masked_fill(remove, float("-inf"))
    probs = sorted_vals.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    p_t = torch.tensor(top_p, dtype=probs.dtype, device=logits.device)
    remove |= mass_before >= p_t[:, None]
    remove[:, 0] = False
    sorted_vals = sorted_vals.masked_fill(remove, float("-inf"))
    return torch.empty_like(logits).scatter_(1, sorted_idx, sorted_vals)


NUCLEUS_CANDIDATES = 256  # top-p first looks for the nucleus among this many tokens
MAX_CANDIDATES = 4096  # a larger top-k takes the full sort


def _nucleus_of_candidates(
    logits: torch.Tensor, ks: list[int], top_p: list[float]
) -> tuple[torch.Tensor, list[int]] | None:
    """`apply_top_k_top_p` from each row's largest few logits (`torch.topk`, linear in the
    vocabulary, instead of sorting it all): exact for a row whose top-k and nucleus lie among
    them, which is checked. Returns the masked logits and the rows where they do not (a flat
    distribution: to be redone by sorting); None when a top-k is too large for candidates."""
    vocab = logits.shape[-1]
    c = max([NUCLEUS_CANDIDATES, *(k for k in ks if k < vocab)])
    if c > MAX_CANDIDATES or c >= vocab:
        return None
    vals, idx = logits.topk(c, dim=-1)  # sorted, largest first
    k_t = torch.tensor(ks, device=logits.device)
    remove = torch.arange(c, device=logits.device)[None, :] >= k_t[:, None]
    kept = vals.masked_fill(remove, float("-inf"))
    whole = k_t >= vocab  # rows without top-k: the nucleus is of the whole distribution
    lse = torch.where(whole, logits.logsumexp(dim=-1), kept.logsumexp(dim=-1))
    probs = (kept - lse[:, None]).exp()
    mass = probs.cumsum(dim=-1)
    p_t = torch.tensor(top_p, dtype=probs.dtype, device=logits.device)
    short = (whole & (mass[:, -1] < p_t)).nonzero().flatten().tolist()
    remove |= mass - probs >= p_t[:, None]
    remove[:, 0] = False
    out = torch.full_like(logits, float("-inf"))
    return out.scatter_(1, idx, vals.masked_fill(remove, float("-inf"))), short


def apply_min_p(logits: torch.Tensor, min_p: list[float]) -> torch.Tensor:
    """Mask tokens whose probability is below min_p times the row's top probability."""
    probs = logits.softmax(dim=-1)
    threshold = torch.tensor(min_p, dtype=probs.dtype, device=logits.device)[:, None]
    keep = probs >= threshold * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(~keep, float("-inf"))


class Sampler:
    """Picks one token per row of logits for the given sequences."""

    def __init__(self, device: torch.device, seed: int = 0, eos_token_ids: Seq[int] = ()):
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.eos_token_ids = list(eos_token_ids)

    def _stop_ids(self, params: SamplingParams) -> list[int]:
        ids = list(params.stop_token_ids)
        if not params.ignore_eos:
            ids += self.eos_token_ids
        return ids

    def _seq_generator(self, seq: Sequence) -> torch.Generator:
        if seq.generator is None:
            assert seq.params.seed is not None
            seed = seq.params.seed + seq.index  # sample i of n: its own reproducible stream
            seq.generator = torch.Generator(device=self.device).manual_seed(seed)
        return seq.generator

    def __call__(
        self,
        logits: torch.Tensor,
        seqs: list[Sequence],
        faults: dict[int, BaseException] | None = None,
    ) -> tuple[list[int], list[TokenLogprobs | None]]:
        """Tokens for `seqs` from float32 `logits` [len(seqs), V] (modified in place).

        With `faults`, an error in one row's own work (penalties, stop-token bans, its seeded
        generator) is recorded there under the row index instead of raised: the other rows are
        still sampled and the faulty row's token is meaningless.
        """
        params = [s.params for s in seqs]
        raw_logprobs = None
        if any(p.logprobs is not None for p in params):
            raw_logprobs = torch.log_softmax(logits, dim=-1)
        tokens = self.sample(logits, seqs, faults)
        token_list: list[int] = tokens.tolist()
        return token_list, self._logprobs(raw_logprobs, token_list, params)

    def sample(
        self,
        logits: torch.Tensor,
        seqs: list[Sequence],
        faults: dict[int, BaseException] | None = None,
    ) -> torch.Tensor:
        """The tokens as a tensor on the logits' device, without waiting for it (no
        logprobs); `faults` as in `__call__`."""
        params = [s.params for s in seqs]
        for i, (seq, p) in enumerate(zip(seqs, params, strict=True)):
            try:
                self._prepare_row(logits[i], seq, p)
            except Exception as exc:
                if faults is None:
                    raise
                faults[i] = exc
                logits[i] = 0.0
        return self._pick(logits, seqs, params, faults)

    def _prepare_row(self, row: torch.Tensor, seq: Sequence, p: SamplingParams) -> None:
        if p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty:
            apply_penalties(row, seq, p)
        if seq.num_output_tokens < p.min_tokens:
            banned = self._stop_ids(p)
            if banned:
                row[banned] = float("-inf")
        if seq.structured is not None:
            seq.structured.mask(row)

    def _pick(
        self,
        logits: torch.Tensor,
        seqs: list[Sequence],
        params: list[SamplingParams],
        faults: dict[int, BaseException] | None = None,
    ) -> torch.Tensor:
        greedy = [p.greedy for p in params]
        if all(greedy):
            return logits.argmax(dim=-1)
        temps = torch.tensor(
            [1.0 if g else p.temperature for g, p in zip(greedy, params, strict=True)],
            dtype=logits.dtype,
            device=logits.device,
        )
        scaled = logits / temps[:, None]
        if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
            scaled = apply_top_k_top_p(scaled, [p.top_k for p in params], [p.top_p for p in params])
        if any(p.min_p > 0.0 for p in params):
            scaled = apply_min_p(scaled, [p.min_p for p in params])
        probs = scaled.softmax(dim=-1)
        noise = torch.empty_like(probs).exponential_(generator=self.generator)
        for i, (seq, p) in enumerate(zip(seqs, params, strict=True)):
            if p.seed is not None and not p.greedy:
                try:
                    noise[i].exponential_(generator=self._seq_generator(seq))
                except Exception as exc:
                    if faults is None:
                        raise
                    faults[i] = exc
        sampled = (probs / noise).argmax(dim=-1)
        if any(greedy):
            mask = torch.tensor(greedy, device=logits.device)
            sampled = torch.where(mask, logits.argmax(dim=-1), sampled)
        return sampled

    @staticmethod
    def _logprobs(
        raw: torch.Tensor | None, tokens: list[int], params: list[SamplingParams]
    ) -> list[TokenLogprobs | None]:
        result: list[TokenLogprobs | None] = [None] * len(tokens)
        if raw is None:
            return result
        rows = [i for i, p in enumerate(params) if p.logprobs is not None]
        idx = torch.tensor(rows, device=raw.device)
        tok = torch.tensor([tokens[i] for i in rows], device=raw.device)
        chosen = raw[idx, tok].tolist()
        kmax = max(params[i].logprobs or 0 for i in rows)
        top_vals: list[list[float]] = []
        top_ids: list[list[int]] = []
        if kmax:
            top = raw[idx].topk(kmax, dim=-1)
            top_vals, top_ids = top.values.tolist(), top.indices.tolist()
        for j, i in enumerate(rows):
            k = params[i].logprobs or 0
            alternatives = tuple(zip(top_ids[j][:k], top_vals[j][:k], strict=True)) if k else ()
            result[i] = TokenLogprobs(tokens[i], chosen[j], alternatives)
        return result
