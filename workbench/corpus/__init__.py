"""Text to score and calibrate on: the built-in corpus and the user's own files (floor 1: errors only)."""

from .builtin import PARTS, builtin_text, load_text

__all__ = ["PARTS", "builtin_text", "load_text"]
