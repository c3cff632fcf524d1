"""Stop conditions: stop strings in the text (token-level stops live in `LLMEngine`)."""

from __future__ import annotations


def find_stop_string(text: str, num_new_chars: int, stops: list[str]) -> tuple[str, int] | None:
    """The stop string that ends earliest in `text` among matches that overlap the last
    `num_new_chars` characters, and where it starts; None if there is none."""
    if not stops or num_new_chars <= 0:
        return None
    longest = max(len(s) for s in stops)
    window_start = max(0, len(text) - num_new_chars - longest + 1)
    best: tuple[str, int] | None = None
    for stop in stops:
        at = text.find(stop, window_start)
        if at != -1 and (best is None or at < best[1]):
            best = (stop, at)
    return best


def holdback(stops: list[str]) -> int:
    """Characters to keep back from a stream: a partial stop string must not leak out."""
    return max((len(s) for s in stops), default=1) - 1
