"""atomic.py: a file is replaced whole or not at all, an error names the user's file (not our
temporary one), and JSON is strict (NaN and infinities are null)."""

from __future__ import annotations

import errno
import json
import os

import pytest

from perceiver_cli import atomic


def test_a_failed_replace_keeps_the_old_file_leaves_no_temporary_and_names_the_real_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.jsonl"
    target.write_text("old\n")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(atomic.temporary_sibling(target)))
    monkeypatch.setattr(atomic.os, "fsync", full_disk)
    with pytest.raises(OSError) as info:
        atomic.write_text_atomic(target, "new\n")
    assert info.value.filename == str(target)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_json_is_strict_nan_and_infinities_become_null(tmp_path):
    path = tmp_path / "r.json"
    atomic.write_json_atomic(path, {"loss": float("nan"), "rows": [1.5, float("inf"), -float("inf")], "n": 3})
    assert json.loads(path.read_text(), parse_constant=pytest.fail) == {"loss": None, "rows": [1.5, None, None], "n": 3}


def test_a_dead_process_is_told_apart_from_a_live_one():
    assert atomic.process_alive(os.getpid())
    assert not atomic.process_alive(2**22 + 12345)  # above pid_max's default: no such process
