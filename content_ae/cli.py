"""Argument helpers shared by the content-AE scripts: the original's flag spellings."""

from __future__ import annotations


def _split(arg: str) -> tuple[str, str | None]:
    if arg.startswith("--") and "=" in arg:
        flag, value = arg.split("=", 1)
        return flag, value
    return arg, None


def translate(argv: list[str], aliases: dict[str, str]) -> list[str]:
    """Rewrite the original's flags as ours.

    ``aliases`` renames flags that take a value. Besides: ``--root DATA`` becomes the
    positional data folder, ``--out DIR`` sets both ``--checkpoint_dir`` and ``--result_dir``,
    ``--load DIR`` becomes ``--resume`` with ``--checkpoint_dir DIR`` (an empty ``--load ''``,
    the original's default, means a fresh run). Everything else passes through unchanged.
    """
    out: list[str] = []
    tail: list[str] = []
    i = 0
    while i < len(argv):
        flag, value = _split(argv[i])
        special = flag in ("--root", "--out", "--load") or flag in aliases
        if special and value is None:
            if i + 1 >= len(argv):
                out.append(argv[i])  # let argparse report the missing value
                break
            value = argv[i + 1]
            i += 1
        i += 1
        if not special:
            out.append(argv[i - 1])
            continue
        if flag == "--root":
            tail.append(value)
        elif flag == "--out":
            out += ["--checkpoint_dir", value, "--result_dir", value]
        elif flag == "--load":
            if value:
                out += ["--resume", "--checkpoint_dir", value]
        else:
            out += [aliases[flag], value]
    return out + tail
