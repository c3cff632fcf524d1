"""`deploylab sim`: a simulated OpenAI-compatible LLM server that follows a configurable
performance model (TTFT, inter-token latency, KV capacity, prefix cache, model residency) and
injects faults. It generates no real text. See docs/sim.md."""

from deploylab.loadtest.sim.config import PRESETS, SimConfig, dump_config, load_config, parse_config
from deploylab.loadtest.sim.server import SimServer, SimThread, serve_forever

__all__ = [
    "PRESETS",
    "SimConfig",
    "SimServer",
    "SimThread",
    "dump_config",
    "load_config",
    "parse_config",
    "serve_forever",
]
