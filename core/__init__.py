"""Spruce's compression engine: torch and transformers only, no service code.

The public entry point is ``core.compress.compress``; import it from there (this package
imports nothing heavy on its own, so ``import spruce.core`` has no side effects).
"""
