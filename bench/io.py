"""Atomic file writes: a reader never sees a half-written result, and a failed write (a full disk, a quota)
leaves no partial file, neither the target nor a temporary one."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from core.errors import UserError

Writer = Callable[[IO[bytes]], Any]


def _write_temp(path: Path, write: Writer) -> Path:
    """Write and fsync a temporary file in `path`'s folder; on failure remove it and name `path` in the error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fh.fileno(), 0o666 & ~umask)  # mkstemp creates 0600; results are ordinary files
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # write and fsync errors carry no file name; the CLI's message needs one
        raise
    return Path(tmp)


def write_files(files: dict[Path, Writer]) -> None:
    """Write files that form one result: each to a temporary file first, all renamed into place only once every
    one is written, so a failed write leaves none of them (earlier versions of the targets stay untouched)."""
    temps: list[tuple[Path, Path]] = []
    try:
        for path, write in files.items():
            temps.append((_write_temp(Path(path), write), Path(path)))
        for tmp, path in temps:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        raise


def as_json(obj: Any) -> Writer:
    data = (json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n").encode()
    return lambda fh: fh.write(data)


def as_text(text: str) -> Writer:
    return lambda fh: fh.write(text.encode())


def as_torch(obj: Any) -> Writer:
    return lambda fh: torch.save(obj, fh)


def write_json(path: Path, obj: Any) -> None:
    write_files({path: as_json(obj)})


def write_text(path: Path, text: str) -> None:
    write_files({path: as_text(text)})


def save_torch(path: Path, obj: Any) -> None:
    write_files({path: as_torch(obj)})


def read_json(path: Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


def read_torch(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=False)


def checked_read(path: Path, what: str, if_missing: str, if_unreadable: str,
                 read: Callable[[Path], Any] = read_json) -> Any:
    """`read(path)` of a file the suite wrote or needs. A missing or unreadable file is a one-line UserError that
    names it: "no {what} at {path}: {if_missing}", or "{what} {path} is corrupt or truncated (...); {if_unreadable}"."""
    if not path.is_file():
        raise UserError(f"no {what} at {path}: {if_missing}")
    try:
        return read(path)
    except Exception as exc:  # torch, json and pandas raise several types for truncated or corrupt files
        raise UserError(f"{what} {path} is corrupt or truncated ({type(exc).__name__}); {if_unreadable}") from None
