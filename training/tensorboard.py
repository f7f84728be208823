"""``train.py --tensorboard``: the run's log as TensorBoard events, beside ``log.jsonl``.

Written through ``torch.utils.tensorboard`` (which needs the ``tensorboard`` package) into the
run folder ``RESULT_DIR/sample_NAME/``; open it with ``tensorboard --logdir RESULT_DIR`` (every
run) or ``--logdir RESULT_DIR/sample_NAME`` (one). Nothing here is imported without the flag.

Tags: ``train/TERM`` for every numeric field of each ``log.jsonl`` record (the same values, at
the same step), ``diagnostics/TERM`` for each ``diagnostics.jsonl`` record, ``samples`` for the
sample grids (the PNG as written). A resumed run drops the events after its checkpoint's step,
as ``log.jsonl`` does.
"""

from __future__ import annotations

from pathlib import Path

from faces.io import read_image

__all__ = ["EventLog", "SKIP_KEYS", "event_files"]

SKIP_KEYS = ("step",)
"""Record fields that are not scalars of their own (the step is the x axis)."""


def event_files(run_dir: str | Path) -> list[Path]:
    """The TensorBoard event files of a run folder."""
    return sorted(Path(run_dir).glob("events.out.tfevents.*"))


class EventLog:
    """A TensorBoard writer for one run folder (main process only).

    ``resume_step``: the step a resumed run continues from; events logged after it by the
    interrupted run are purged, as its ``log.jsonl`` records are.
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None) -> None:
        try:
            # deferred: an optional package (--tensorboard only), ~0.1 s at start-up
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ValueError("--tensorboard needs the tensorboard package (pip install "
                             f"tensorboard; it is in requirements.txt): {exc}") from None
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(
            log_dir=str(run_dir), purge_step=None if resume_step is None else resume_step + 1)

    def scalars(self, record: dict, step: int, prefix: str = "train/") -> None:
        """Every numeric field of ``record`` as ``PREFIX + key`` at ``step`` (stored as
        float32, as TensorBoard keeps scalars)."""
        for key, value in record.items():
            if key in SKIP_KEYS or isinstance(value, bool) or \
                    not isinstance(value, (int, float)):
                continue
            self.writer.add_scalar(prefix + key, float(value), step)

    def image(self, tag: str, path: str | Path, step: int) -> None:
        """The PNG at ``path`` (a sample grid, as written) as image ``tag`` at ``step``."""
        arr = read_image(path)  # the project's one reader
        self.writer.add_image(tag, arr, step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
