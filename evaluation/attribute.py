"""``evaluate.py --model content-ae``: attribute transfer scored against the exact answers
(being moved here from content_ae.evaluate)."""

from content_ae.evaluate import main

__all__ = ["main"]
