"""Adapters for managed vendor APIs (OpenAI-compatible, Anthropic): wire shapes, backends."""
