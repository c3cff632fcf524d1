"""The serving engine: model layers and loaders, paged KV cache with prefix caching,
continuous-batching scheduler, sampler, and the `LLM` (offline) and `AsyncEngine` APIs.
Knows nothing of HTTP."""
