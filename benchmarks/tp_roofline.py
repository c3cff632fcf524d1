"""A roofline MODEL (not a measurement) of tensor-parallel decode on 2/4/8 H100s over NVLink.

Per decode step on N GPUs, with no overlap of communication and compute (the all-reduces sit
on the critical path of every layer):

    t(N) = max(weight bytes / N + KV bytes / N) / HBM bandwidth,  2 P batch / (N peak))
         + (2 L + 1) all-reduces of [batch, hidden] bf16 + 1 all-gather of [batch, vocab/N]
    collective time = alpha + (ring bytes per GPU) / bus bandwidth
    ring bytes: all-reduce 2 (N-1)/N x message, all-gather (N-1)/N x result

Assumptions (replace with measured values from `benchmarks/tensor_parallel.py` on a
multi-GPU machine, issue #26): HBM 3.0 TB/s (copy bandwidth measured on our H100), 800
TFLOP/s bf16 (measured here), NCCL latency alpha = 10 us per collective, NCCL bus
bandwidth 360 GB/s on NVLink 4 (NVLS/multicast off), context 1024 tokens per sequence.

    python benchmarks/tp_roofline.py   # prints the markdown table of docs/benchmarks.md
"""

from __future__ import annotations

from deploylab.engine.models.presets import get_preset

HBM = 3.0e12
PEAK = 800e12
ALPHA = 10e-6
BUS = 360e9
MEMORY = 80e9 * 0.9
CONTEXT = 1024
ELEM = 2


def params(shape: str) -> float:
    c = get_preset(shape)
    layer = c.hidden_size * c.head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
    layer += 3 * c.hidden_size * c.intermediate_size
    embed = c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2)
    return float(c.num_hidden_layers * layer + embed)


def step(shape: str, n: int, batch: int) -> dict[str, float] | None:
    """Modelled milliseconds of one decode step (None: does not fit N x 80 GB)."""
    c = get_preset(shape)
    weights = params(shape) * ELEM
    kv = batch * CONTEXT * 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * ELEM
    if (weights + kv) / n > MEMORY:
        return None
    memory = (weights + kv) / n / HBM
    compute = 2 * params(shape) * batch / n / PEAK
    comm = 0.0
    if n > 1:
        message = batch * c.hidden_size * ELEM
        reduce = ALPHA + 2 * (n - 1) / n * message / BUS
        gather = ALPHA + (n - 1) / n * batch * c.vocab_size * ELEM / BUS
        comm = (2 * c.num_hidden_layers + 1) * reduce + gather
    total = max(memory, compute) + comm
    return {"memory": memory * 1e3, "compute": compute * 1e3, "comm": comm * 1e3,
            "total": total * 1e3, "tok_s": batch / total}  # fmt: skip


def main() -> None:
    print("| shape | batch | GPUs | weights+KV / HBM (ms) | comm (ms) | step (ms) | "
          "comm share | tokens/s | speed-up vs fewest GPUs |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for shape in ("llama-3.1-8b", "llama-3.1-70b"):
        for batch in (1, 64, 256):
            base = None
            for n in (1, 2, 4, 8):
                m = step(shape, n, batch)
                if m is None:
                    print(f"| {shape} | {batch} | {n} | does not fit | | | | | |")
                    continue
                base = base or (n, m["tok_s"])
                speed = m["tok_s"] / base[1]
                print(
                    f"| {shape} | {batch} | {n} | {max(m['memory'], m['compute']):.2f} | "
                    f"{m['comm']:.2f} | {m['total']:.2f} | {m['comm'] / m['total']:.0%} | "
                    f"{m['tok_s']:.0f} | {speed:.2f}x vs {base[0]} |"
                )


if __name__ == "__main__":
    main()
