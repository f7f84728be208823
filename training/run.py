"""A training run's files (:class:`Run`) and its lock (:class:`RunLock`).

A run lives in the thesis's two homes: its checkpoints in ``CHECKPOINT_DIR/NAME/`` (``last.pt``,
``step_NNNNNNN.pt``, ``.lock``), the rest in the run folder ``RESULT_DIR/sample_NAME/``
(``config.json``, logs, grids, ``unreadable.txt``, TensorBoard events).

One process per run name: ``.lock`` holds the pid and host of the process training the run, and
that process holds an exclusive ``flock`` on it for as long as it lives. A second ``train.py -n
NAME`` (any model) finds the lock held and is refused with one line naming the holder, before it
reads data or touches a file of the run. The kernel drops a ``flock`` when its process ends,
however it ends: after a crash or ``kill -9`` the file stays but nobody holds it, so the next run
recognises it as stale (the pid it names is gone), says so, and takes it over. On exit the file
is removed, and the checkpoint folder too when the run wrote nothing into it.

``flock`` works between processes of one machine (and on local file systems); several machines
training into one shared folder are not guarded by it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path

LOCK_NAME = ".lock"


class RunLockedError(ValueError):
    """The run is being trained by another live process; the message is one line."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(text: str) -> tuple[int | None, str]:
    """(pid, host) written in a lock file; (None, "") when it is empty or garbled."""
    fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
    try:
        return int(fields.get("pid", "")), fields.get("host", "")
    except ValueError:
        return None, fields.get("host", "")



class Run:
    """The files of run ``name``: ``checkpoints`` (CHECKPOINT_DIR/NAME) and ``samples``
    (RESULT_DIR/sample_NAME, the run folder of config, logs and grids)."""

    def __init__(self, name: str, checkpoint_dir: str | Path = "checkpoint",
                 result_dir: str | Path = "result") -> None:
        self.name = name
        self.checkpoints = Path(checkpoint_dir) / name
        self.samples = Path(result_dir) / f"sample_{name}"
        self.last = self.checkpoints / "last.pt"
        self.config, self.log, self.diagnostics, self.unreadable = (
            self.samples / f for f in ("config.json", "log.jsonl", "diagnostics.jsonl",
                                       "unreadable.txt"))

    @classmethod
    def of_checkpoint(cls, path: str | Path, result_dir: str | Path = "result") -> Run:
        """The run a checkpoint file belongs to (its folder names the run)."""
        return cls(Path(path).parent.name, Path(path).parent.parent, result_dir)

    def step_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:07d}.pt"

    def step_checkpoints(self) -> list[Path]:
        """``step_NNNNNNN.pt`` files of the run, oldest first."""
        return sorted(self.checkpoints.glob("step_*.pt"))

    def resume_source(self) -> Path | None:
        """The checkpoint ``--resume`` continues from: ``last.pt``, or when it is missing
        (deleted, or lost with a disk) the newest ``step_*.pt``; None without a checkpoint."""
        if self.last.is_file():
            return self.last
        steps = self.step_checkpoints()
        return steps[-1] if steps else None

    def grid(self, step: int) -> Path:
        return self.samples / f"{step:06d}.png"

    def clear(self) -> None:
        """Delete the run's checkpoints, log, unreadable list, sample grids and TensorBoard
        events (a fresh start over an old run)."""
        for p in (self.last, *self.step_checkpoints(), self.log, self.unreadable,
                  *self.samples.glob("[0-9]*.png"), *self.samples.glob("events.out.tfevents.*")):
            p.unlink(missing_ok=True)

    def lock(self) -> RunLock:
        return RunLock(self.checkpoints, self.name)


def resolve_checkpoint(value: str | None, checkpoint_dir: str | Path, default: str) -> Path:
    """``--checkpoint``: a file path, or a run name (CHECKPOINT_DIR/NAME/last.pt), or a folder
    holding DEFAULT; default CHECKPOINT_DIR/DEFAULT. A missing file is left for the loader to
    report."""
    ckdir = Path(checkpoint_dir)
    if value is None:
        return ckdir / default
    p = Path(value)
    if p.is_file():
        return p
    last = Run(value, ckdir).last
    for cand in (last, ckdir / value):
        if cand.is_file():
            return cand
    if p.suffix or "/" in value or "\\" in value:
        return p / default if p.is_dir() else p
    return last


class RunLock:
    """The lock of one run folder (see the module docstring). Use as a context manager, or
    :meth:`acquire` / :meth:`release`. ``stale`` is set after :meth:`acquire` to a one-line
    note when a lock left by a process that ended without releasing it was taken over."""

    def __init__(self, folder: str | Path, name: str) -> None:
        self.folder = Path(folder)
        self.name = name
        self.path = self.folder / LOCK_NAME
        self.stale: str = ""
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except (NotADirectoryError, FileExistsError):
            blocker = next((p for p in (self.folder, *self.folder.parents) if p.is_file()),
                           self.folder)
            raise ValueError(f"--checkpoint_dir: {blocker} is a file, not a folder; give a "
                             "folder for the checkpoints") from None
        except PermissionError:
            raise ValueError(f"--checkpoint_dir: cannot create {self.folder} (permission "
                             "denied); give a folder you can write to") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # a finishing run removed the empty folder just now
                self.folder.mkdir(parents=True, exist_ok=True)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.pread(fd, 200, 0).decode("ascii", "replace")
                os.close(fd)
                pid, host = _holder(text)
                who = f"process {pid}" if pid else "another process"
                if host and host != socket.gethostname():
                    who += f" on {host}"
                raise RunLockedError(
                    f"run '{self.name}' is being trained by {who} (lock {self.path}); wait for "
                    "it to finish, or pick another -n NAME") from None
            # The holder before us may have removed the file after we opened it: then we hold
            # a lock on a file nobody else will open. Retry on the file the path names now.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        text = os.pread(fd, 200, 0).decode("ascii", "replace")
        pid, host = _holder(text)
        if pid is not None and pid != os.getpid():
            state = "is gone" if not _alive(pid) else "no longer holds it"
            self.stale = (f"note: took over the stale lock {self.path}: process {pid} {state} "
                          "(its run ended without releasing the lock, e.g. a crash)")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # before unlocking: see acquire's retry
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(OSError):  # a run that wrote nothing leaves no empty folder
            self.folder.rmdir()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
