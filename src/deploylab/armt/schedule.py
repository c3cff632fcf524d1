"""Segments of a long input and the diagonal schedule over (layer, segment) pairs.

The state of (layer l, segment s) depends on (l, s−1) through the layer's memory and on
(l−1, s) through the hidden states, so all pairs with l + s = d are independent. Step d runs
layers max(0, d−S+1) .. min(L−1, d), a contiguous range: the first L−1 steps ramp up, the last
L−1 drain, and L + S − 1 steps cover all L·S pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

from deploylab.errors import UsageError


def split_segments(num_tokens: int, segment_size: int) -> list[tuple[int, int]]:
    """[start, end) token ranges of the segments, left-aligned; the last may be shorter."""
    if num_tokens < 1:
        raise UsageError("The input is empty: ARMT needs at least one token.")
    if segment_size < 1:
        raise UsageError(f"segment_size must be >= 1, got {segment_size}.")
    return [(a, min(a + segment_size, num_tokens)) for a in range(0, num_tokens, segment_size)]


@dataclass(frozen=True)
class DiagonalStep:
    """Anti-diagonal `index` = l + s, running layers `first_layer..last_layer`."""

    index: int
    first_layer: int
    last_layer: int

    @property
    def size(self) -> int:
        """How many (layer, segment) pairs run in this step."""
        return self.last_layer - self.first_layer + 1

    def segment_of(self, layer: int) -> int:
        """The segment that `layer` processes in this step."""
        return self.index - layer

    def pairs(self) -> list[tuple[int, int]]:
        """The (layer, segment) pairs of this step, by increasing layer."""
        return [(lay, self.index - lay) for lay in range(self.first_layer, self.last_layer + 1)]


def diagonal_schedule(num_layers: int, num_segments: int) -> list[DiagonalStep]:
    """The L + S − 1 steps of diagonal batching for L layers and S segments."""
    if num_layers < 1 or num_segments < 1:
        raise UsageError(
            f"A schedule needs >= 1 layer and >= 1 segment (got {num_layers}, {num_segments})."
        )
    return [
        DiagonalStep(d, max(0, d - num_segments + 1), min(num_layers - 1, d))
        for d in range(num_layers + num_segments - 1)
    ]


def render_schedule(num_layers: int, num_segments: int) -> str:
    """A Markdown grid: one row per layer (last layer on top), one column per segment, each
    cell the step that runs that pair. Equal numbers lie on one anti-diagonal."""
    steps = diagonal_schedule(num_layers, num_segments)
    width = len(str(len(steps) - 1))
    header = "| layer \\ segment | " + " | ".join(f"s{s}" for s in range(num_segments)) + " |"
    rule = "|---|" + "---|" * num_segments
    rows = [header, rule]
    for layer in reversed(range(num_layers)):
        cells = " | ".join(f"{layer + s:>{width}}" for s in range(num_segments))
        rows.append(f"| L{layer} | {cells} |")
    sizes = ", ".join(str(step.size) for step in steps)
    rows.append("")
    rows.append(
        f"{len(steps)} grouped steps instead of {num_layers * num_segments} layer calls; "
        f"pairs per step: {sizes}."
    )
    return "\n".join(rows)
