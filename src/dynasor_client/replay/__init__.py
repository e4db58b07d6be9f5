"""Replay engine: answers OpenAI-compatible requests from recorded model outputs with GPU-like timing."""
