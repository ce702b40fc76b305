"""editctrl_core.loading.weights_file: the one atomic-write / safetensors / container-check / digest implementation
that adapters, LoRAs, caches and training checkpoints share."""

from __future__ import annotations

import hashlib
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from editctrl_core.loading.weights_file import (
    atomic_write,
    check_container,
    file_digest,
    remove_stale_temps,
    save_safetensors,
    temp_path,
    write_text,
)


class Refused(ValueError):
    pass


def _check(path: Path) -> None:
    check_container(path, Refused, "adapter", "Re-export it with save_adapter.")


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.safetensors"
    save_safetensors(path, {"w": torch.ones(2)}, {"k": "1"})
    before = path.read_bytes()

    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.safetensors"]


def test_safetensors_round_trip_with_metadata_from_any_device_and_layout(tmp_path: Path) -> None:
    t = torch.arange(12.0).reshape(3, 4).t()  # not contiguous
    path = save_safetensors(tmp_path / "b.safetensors", {"t": t.requires_grad_()}, {"note": "x"})
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"note": "x"}
        assert torch.equal(f.get_tensor("t"), t.detach())
    _check(path)


def test_write_text_and_digest(tmp_path: Path) -> None:
    path = write_text(tmp_path / "state.json", '{"step": 3}')
    assert path.read_text() == '{"step": 3}'
    assert file_digest(path) == hashlib.sha256(b'{"step": 3}').hexdigest()


def test_temp_names_keep_a_suffix_and_stale_ones_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    tmp = temp_path(path, ".mp4")
    assert tmp.parent == path.parent and tmp.name.startswith(".clip.mp4.tmp-") and tmp.suffix == ".mp4"
    tmp.write_bytes(b"x")
    (tmp_path / ".clip.mp4.tmp-99999").write_bytes(b"y")
    (tmp_path / "other.mp4").write_bytes(b"z")
    assert len(remove_stale_temps(path)) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["other.mp4"]


def test_pickles_zips_truncated_and_missing_files_are_refused_with_what_to_do(tmp_path: Path) -> None:
    pickled = tmp_path / "p.bin"
    pickled.write_bytes(pickle.dumps({"w": [1, 2]}, protocol=4))
    with pytest.raises(Refused, match="not a safetensors adapter; it was not unpickled. Re-export it"):
        _check(pickled)
    zipped = tmp_path / "z.pt"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("archive/data.pkl", b"x")
    with pytest.raises(Refused, match="pickle/torch checkpoint"):
        _check(zipped)
    good = save_safetensors(tmp_path / "g.safetensors", {"w": torch.zeros(64)})
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(struct.pack("<Q", 10_000) + good.read_bytes()[8:40])
    with pytest.raises(Refused, match="corrupt or truncated: its header claims 10000 bytes"):
        _check(truncated)
    with pytest.raises(Refused, match="does not exist"):
        _check(tmp_path / "missing.safetensors")
    junk = tmp_path / "j.safetensors"
    junk.write_bytes(b"\x00" * 3)
    with pytest.raises(Refused, match="not a safetensors file"):
        _check(junk)
