"""Atomic writes on a full disk: no partial or temporary file is left, and the CLI says which file and what to do."""
import errno
import json
import os

import pytest

from bench import cli
from bench.io import as_json, as_text, read_json, write_files, write_json
from bench.train import CHECKPOINT, LOG


def _disk_full(code=errno.ENOSPC):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


def test_a_failed_write_leaves_no_file_of_the_set_and_keeps_the_old_version(tmp_path):
    target = tmp_path / "provenance.json"
    write_json(target, {"version": 1})
    with pytest.raises(OSError) as info:
        write_files({tmp_path / "train_log.csv": as_text("step\n"), target: as_json({"version": 2}),
                     tmp_path / "checkpoint.pt": _disk_full()})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "checkpoint.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["provenance.json"] and read_json(target) == {"version": 1}


@pytest.mark.parametrize("patch, code, named", [
    ("bench.io.os.fsync", errno.ENOSPC, LOG),  # every write fails: the first of the final files is named
    ("bench.io.torch.save", errno.EDQUOT, CHECKPOINT),  # only the checkpoint, written after the log and provenance
])
def test_training_on_a_full_disk_is_a_one_line_error_and_leaves_nothing(tmp_path, monkeypatch, capsys, patch, code,
                                                                        named):
    monkeypatch.setattr(patch, _disk_full(code))
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--method", "realnvp", "--dataset", "moons", "--seed", "0", "--out", str(run), "--hparams",
                  json.dumps({"steps": 5, "batch_size": 64, "width": 16}), "--loop", json.dumps({"val_size": 100}),
                  "--no-progress"])
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and line.startswith(f"dgmbench: error: could not write {run / named}: {os.strerror(code)}")
    assert "free space on that disk or write the results to another one" in line
    assert list(run.iterdir()) == []  # no checkpoint.pt, provenance.json, train_log.csv or temporary file
