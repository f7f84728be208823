"""``evaluate.py --model pose-flow``: pose transfer scored against the exact answers (being
moved here from pose_flow.evaluate)."""

from pose_flow.evaluate import evaluate_cli as main

__all__ = ["main"]
