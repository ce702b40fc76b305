"""Files the pack writes and reads back: atomic writes, safetensors saves, the container check and content digests.

One implementation that adapters, LoRAs, TMA/Qwen caches, training caches and checkpoints share, so a half-written
file never takes a final name and every reader refuses pickles and truncated files the same way.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file


def temp_path(path: Path, suffix: str = "") -> Path:
    """This process's temp file for `path`: hidden, pid-tagged (``.NAME.tmp-PID``, then `suffix` for writers that
    pick the format from the name), in the same folder so the rename is atomic."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete the temp files a killed run left for `path`; returns them."""
    stale = sorted(path.parent.glob(f".{path.name}.tmp-*"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], suffix: str = "") -> Path:
    """Call `write(temp)` and rename the temp file to `path` (its folder created); the temp never survives an error
    and `path` is either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Save `tensors` (detached, on the CPU, contiguous) with string `metadata`, atomically."""
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = dict(metadata) if metadata is not None else None
    return atomic_write(path, lambda tmp: save_file(data, str(tmp), metadata=meta))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` atomically, flushed to disk before the rename (state files a resumed run trusts)."""
    def write(tmp: Path) -> None:
        with tmp.open("w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    return atomic_write(path, write)


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (hex), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_container(path: Path, error: type[Exception], what: str, remedy: str) -> None:
    """Refuse a file that is not safetensors before any parser touches it (pickles and zips are never unpickled;
    truncated headers are named), raising `error`; `what` names the file's kind, `remedy` how to make a good one."""
    if not path.is_file():
        raise error(f"{what} file {str(path)!r} does not exist")
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        opening = fh.read(1) if 0 < header_len <= size - 8 else b""
    if opening == b"{":
        return
    zipped = head[:4] == b"PK\x03\x04"
    pickled = len(head) >= 3 and head[0] == 0x80 and 2 <= head[1] <= 5 and head[2] != 0
    if zipped or pickled:
        raise error(f"{str(path)!r} is a pickle/torch checkpoint, not a safetensors {what}; it was not unpickled. "
                    f"{remedy}")
    if 0 <= header_len and header_len > size - 8:
        raise error(f"{str(path)!r} is corrupt or truncated: its header claims {header_len} bytes but the file has "
                    f"{size}; copy or download it again")
    raise error(f"{str(path)!r} is not a safetensors file ({size} bytes); the file is corrupt or truncated - copy or "
                "download it again")
