"""Associative Recurrent Memory Transformer on the engine's Llama layers, with sequential and
diagonal-batching executors for long contexts."""
