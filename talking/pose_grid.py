"""``test.py --model pose-flow --transfer_grid``: the pose-transfer grid (being moved here from
pose_flow.driving)."""

from pose_flow.driving import _grid_cli as main

__all__ = ["main"]
