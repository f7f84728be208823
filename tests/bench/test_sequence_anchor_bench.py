"""bench/sequence_anchor.py: the table of both anchors on the shared talking sequence, and a
one-line error for a missing source."""

from __future__ import annotations

from bench import sequence_anchor


def test_prints_both_anchors_on_the_shared_talking_sequence(shared_faces, capsys):
    """The table the docs quote (its figures' properties: tests/faces/test_sequence_anchor.py)."""
    src = shared_faces / "source_img" / "ellen"
    assert sequence_anchor.main([str(src), "--frames", "60"]) == 0
    out = capsys.readouterr().out
    assert "60 frames, 60 with a face" in out
    rows = [line for line in out.splitlines() if line.startswith(("| head ", "| mouth "))]
    assert len(rows) == 2 and all(len(r.split("|")) == 8 for r in rows), rows


def test_a_missing_source_is_one_line(tmp_path, capsys):
    assert sequence_anchor.main([str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "none" in err[0]
