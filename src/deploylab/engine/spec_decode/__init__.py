"""Speculative decoding in the engine step: proposers, batched verification, the engine hook.

`engine/spec/` holds the verification rules as pure functions; this package puts them into
the serving loop (see docs/speculative.md, "In the engine"). The engine calls one object,
`SpecDecoder`, at three points of its step; the scheduler and model runner only see draft
tokens as a few extra tokens of a running sequence.
"""

from deploylab.engine.spec_decode.config import SpeculativeConfig, parse_speculative_config
from deploylab.engine.spec_decode.decoder import SpecDecoder, SpecStats
from deploylab.engine.spec_decode.ngram import NgramProposer
from deploylab.engine.spec_decode.proposer import Proposer

__all__ = [
    "NgramProposer",
    "Proposer",
    "SpecDecoder",
    "SpecStats",
    "SpeculativeConfig",
    "parse_speculative_config",
]
