"""How close the simulator's prompt-token approximation is to a real tokenizer.

Run from the repository root:

    PYTHONPATH=src python3 benchmarks/sim_token_count.py

Counts three kinds of text with `deploylab sim`'s approximation (no tokenizer configured) and
with the default model's tokenizer (SmolLM2-135M-Instruct): the load tester's own prompts of
three built-in scenarios, and English technical prose (the paragraphs of this repository's
docs/*.md and README.md). Prints approximate / real token totals and the 5th-95th
percentile of the per-text ratio. Chat templates are left out on both sides.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deploylab.loadtest.library import load_scenario
from deploylab.loadtest.plan import make_generator
from deploylab.loadtest.sim.tokens import text_pieces
from deploylab.loadtest.text import approximate_words, load_tokenizer

REPO = Path(__file__).resolve().parents[1]
SAMPLES = {"chat-short": 40, "rag": 8, "interactive-long": 40}


def load_tester_texts(scenario: str, n: int) -> list[str]:
    """The first n prompts (system prompt and first turn) the load tester sends."""
    gen = make_generator(load_scenario(scenario).scenario, approximate_words(), 0, None)
    texts = []
    for index in range(n):
        item = gen.item(index)
        texts.append((item.system + " " if item.system else "") + item.turns[0].content)
    return texts


def prose_paragraphs() -> list[str]:
    """Paragraphs of running text (no tables, code, headings or images) from the docs."""
    out = []
    for path in [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]:
        for para in path.read_text(encoding="utf-8").split("\n\n"):
            if len(para) > 200 and not para.lstrip().startswith(("|", "```", "#", "!")):
                out.append(para)
    return out


def main() -> None:
    tokenizer, _ = load_tokenizer("smollm2-135m-instruct")
    sets = {f"load tester: {s}": load_tester_texts(s, n) for s, n in SAMPLES.items()}
    sets["English technical prose (docs)"] = prose_paragraphs()
    print(f"{'text':34} {'texts':>5} {'real tokens':>11} {'approx':>8} {'ratio':>6} {'p5-p95':>11}")
    for name, texts in sets.items():
        real = np.array([len(tokenizer.encode(t, add_special_tokens=False)) for t in texts])
        approx = np.array([len(text_pieces(t)) for t in texts])
        per = approx / real
        p5, p95 = np.percentile(per, [5, 95])
        print(
            f"{name:34} {len(texts):5d} {real.sum():11d} {approx.sum():8d} "
            f"{approx.sum() / real.sum():6.3f} {p5:5.2f}-{p95:4.2f}"
        )


if __name__ == "__main__":
    main()
