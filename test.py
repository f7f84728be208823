#!/usr/bin/env python
"""Make a query face talk with a source sequence's mouth motion (AD-flow, MI-flow).

The thesis's script name, kept for users; the logic lives in ``talking.cli`` (importable: a
module named ``test`` would shadow the standard library's package). Examples and flags:
``python test.py --model NAME --help``.
"""

from __future__ import annotations

import sys

from training.allocator import maybe_use_jemalloc

if __name__ == "__main__":
    maybe_use_jemalloc()

from talking.cli import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
