"""Token trees of drafts in the engine (`speculative_config.tree_width` > 1).

A sequence's drafts are the nodes of a tree appended to `token_ids` in topological order;
`seq.draft_parents[i]` is node i's parent (-1: the last real token, the root). The verify
chunk is the root and the nodes, so row 0 scores the root's children and row i + 1 node i's.
Node i's key and value go to slot position p0 + 1 + i, its rotary position is p0 + depth;
each row attends to the context and its own path (`chunk_mask`). After verification the kept
path's KV moves to the positions a chain would have used (`path_moves`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from deploylab.engine.spec.tree import ancestor_mask, node_depths


def rooted(parents: list[int]) -> list[int]:
    """The chunk's tree in `engine/spec/tree.py`'s form: node 0 the root, node i + 1 draft i."""
    return [-1, *(a + 1 for a in parents)]


def depths(parents: list[int]) -> list[int]:
    """Each node's depth below the root (a root child: 1)."""
    return node_depths(rooted(parents))[1:]


def row_offsets(parents: list[int]) -> list[int]:
    """Each chunk row's output index past the current one: the root 0, a node its depth."""
    return node_depths(rooted(parents))


def chunk_mask(parents: list[int]) -> torch.Tensor:
    """(n + 1, n + 1) bool over the verify chunk (root first): row r may attend to chunk key
    c iff c is r itself or one of r's ancestors (the root is everyone's)."""
    return ancestor_mask(rooted(parents))


def children(parents: list[int]) -> list[list[int]]:
    """Per chunk row (root first), the nodes below it in order."""
    kids: list[list[int]] = [[] for _ in range(len(parents) + 1)]
    for i, a in enumerate(parents):
        kids[a + 1].append(i)
    return kids


def walk_greedy(parents: list[int], tokens: list[int], best: list[int]) -> list[int]:
    """The kept path (node indices) when each row keeps the child equal to its argmax
    `best[row]` (rows root first)."""
    kids, path, row = children(parents), list[int](), 0
    while True:
        hit = next((c for c in kids[row] if tokens[c] == best[row]), None)
        if hit is None:
            return path
        path.append(hit)
        row = hit + 1


def walk_sampled(
    parents: list[int], tokens: list[int], p: torch.Tensor, generator: torch.Generator
) -> tuple[list[int], int]:
    """Exact verification of deterministic, distinct candidates (recursive rejection with
    point-mass drafts): at a row with target distribution r, child c is kept with probability
    r(c), else c is removed from r and r renormalised; when no child is kept, a token is
    drawn from what is left. The emitted tokens follow p. Returns (path, that token)."""
    kids, path, row = children(parents), list[int](), 0
    while True:
        r = p[row].clone()
        kept = None
        for c in kids[row]:
            t = tokens[c]
            u = float(torch.rand((), generator=generator, device=generator.device))
            if u < float(r[t]):
                kept = c
                break
            r[t] = 0.0
            total = float(r.sum())
            if total <= 0.0:  # the candidates held all the mass (float rounding)
                break
            r /= total
        if kept is None:
            token = int(torch.multinomial(r.float(), 1, generator=generator))
            return path, token
        path.append(kept)
        row = kept + 1


def path_moves(p0: int, path: list[int]) -> list[tuple[int, int]]:
    """(from, to) positions of kept nodes that are not where a chain would be: node i sits
    at p0 + 1 + i and the path's d-th node belongs at p0 + 1 + d."""
    return [(p0 + 1 + node, p0 + 1 + d) for d, node in enumerate(path) if node != d]


def path_slots(paths: list[tuple[Any, list[int]]], block_size: int) -> tuple[list[int], list[int]]:
    """Cache slots (from, to) of every move of `paths` ((sequence, kept path) pairs, read
    before the step's tokens are counted as computed)."""
    src: list[int] = []
    dst: list[int] = []
    for seq, path in paths:
        table = seq.block_table
        for a, b in path_moves(seq.num_computed_tokens, path):
            src.append(table[a // block_size] * block_size + a % block_size)
            dst.append(table[b // block_size] * block_size + b % block_size)
    return src, dst


def lookup_tree(
    tokens: np.ndarray, k: int, n_max: int, n_min: int, width: int
) -> tuple[list[int], list[int]]:
    """Prompt lookup with up to `width` different continuations (the latest matches of the
    longest suffix n-grams first) merged into a trie of at most k nodes, the latest one
    deepest: (tokens, parents)."""
    total = len(tokens)
    conts: list[list[int]] = []
    for n in range(min(n_max, total - 1), n_min - 1, -1):
        pattern = tokens[total - n :]
        windows = np.lib.stride_tricks.sliding_window_view(tokens[: total - 1], n)
        for hit in np.flatnonzero((windows == pattern).all(axis=1))[::-1]:
            cont = tokens[int(hit) + n : int(hit) + n + k].tolist()
            if cont and cont not in conts:
                conts.append(cont)
            if len(conts) >= width:
                break
        if len(conts) >= width:
            break
    out_tokens: list[int] = []
    out_parents: list[int] = []
    index: dict[tuple[int, int], int] = {}  # (parent, token) -> node
    for rank, cont in enumerate(conts):
        # The latest match goes deepest, but leaves one node for each other candidate.
        limit = k - (len(conts) - 1) if rank == 0 else k
        parent = -1
        for t in cont:
            node = index.get((parent, t))
            if node is None:
                if len(out_tokens) >= limit:
                    break
                node = len(out_tokens)
                index[(parent, t)] = node
                out_tokens.append(t)
                out_parents.append(parent)
            parent = node
    return out_tokens, out_parents
