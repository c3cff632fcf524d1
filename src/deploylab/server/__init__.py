"""The OpenAI-compatible HTTP server (`deploylab serve`): a thin adapter that parses and
validates requests, calls `AsyncEngine`, and streams results back."""
