"""``test.py --model content-ae``: the attribute transfer grid (being moved here from
content_ae.transfer)."""

from content_ae.transfer import main

__all__ = ["main"]
