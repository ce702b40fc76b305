"""Training masks: random shapes within area bounds, object masks, `mixed` ratio, MuLAn via a restricted unpickler."""

from __future__ import annotations

import builtins
import codecs
import math
import os
import pickle
import re
import subprocess
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from training.masks import (
    MaskSampler,
    MaskStrategyConfig,
    load_object_masks,
    random_mask,
    save_object_masks,
)
from training.mulan import (
    CHUNK,
    LICENCE_WARNING,
    MAX_BYTES,
    MAX_RATIO,
    MIN_LIMIT,
    MuLAnFormatError,
    SemanticMaskLibrary,
    UnsafePickleError,
    decompress_limit,
    instance_masks,
    load_annotation,
)

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

GRID = (3, 16, 24)


def write_pzl(path: Path, obj: object, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    """Write `obj` as a MuLAn-style zlib-compressed pickle."""
    path.write_bytes(zlib.compress(pickle.dumps(obj, protocol=protocol)))
    return path


class _Payload:
    """Pickles as a call of `func(*args)`: what a malicious annotation would carry."""

    def __init__(self, func: object, args: tuple) -> None:
        """Remember the callable and its arguments."""
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        """Tell pickle to rebuild this object by calling func(*args)."""
        return self.func, self.args


def malicious_payloads(sentinel: Path) -> dict[str, object]:
    """Payloads that would create `sentinel` if they were ever executed."""
    return {
        "os.system": _Payload(os.system, (f"touch {sentinel}",)),
        "builtins.eval": _Payload(builtins.eval, (f"open({str(sentinel)!r}, 'w').close()",)),
        "builtins.open": _Payload(open, (str(sentinel), "w")),
        "subprocess.Popen": _Payload(subprocess.Popen, (["touch", str(sentinel)],)),
    }


def alpha_with_area(h: int, w: int, area: float, value: int = 255) -> np.ndarray:
    """uint8 alpha [h, w] whose first round(area*h*w) cells (row-major) are `value`."""
    a = np.zeros(h * w, np.uint8)
    a[: round(area * h * w)] = value
    return a.reshape(h, w)


def annotation(alphas: list[np.ndarray], as_dict: bool = True) -> dict:
    """Synthetic MuLAn annotation with real numpy arrays in every field."""
    h, w = alphas[0].shape[:2]
    instances = [
        {"instance_alpha": a, "original_image_mask": a > 127, "inpainted_delta": np.zeros((h, w, 3), np.int16),
         "instance_mask": (a > 127).astype(np.uint8), "llava": f"object {i}", "blip2": f"thing {i}",
         "score": np.float32(0.9)}
        for i, a in enumerate(alphas)
    ]
    return {
        "captioning": {"llava": "a scene", "blip2": "a photo"},
        "background": {"llava": "a wall", "instance_alpha": np.full((h, w), 255, np.uint8)},
        "image": np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8),
        "instances": dict(enumerate(instances)) if as_dict else instances,
    }


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "builtins.open", "subprocess.Popen"])
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_malicious_pickle_is_refused_without_running(tmp_path, name, protocol):
    sentinel = tmp_path / "pwned"
    payload = malicious_payloads(sentinel)[name]
    evil = {"captioning": {}, "instances": {0: {"instance_alpha": payload}}}
    path = write_pzl(tmp_path / "0001.p.zl", evil, protocol)
    with pytest.raises(UnsafePickleError, match="refusing to load global") as e:
        load_annotation(path)
    assert "0001.p.zl" in str(e.value)
    assert not sentinel.exists()
    with pytest.raises(UnsafePickleError):
        SemanticMaskLibrary.from_annotations(tmp_path, skip_corrupt=True)
    assert not sentinel.exists()


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_legit_annotation_loads(tmp_path, protocol):
    alphas = [alpha_with_area(32, 48, 0.25), alpha_with_area(32, 48, 0.5)]
    ann = annotation(alphas)
    loaded = load_annotation(write_pzl(tmp_path / "img.p.zl", ann, protocol))
    assert loaded["captioning"] == {"llava": "a scene", "blip2": "a photo"}
    assert np.array_equal(loaded["image"], ann["image"])
    inst = loaded["instances"][1]
    assert np.array_equal(inst["instance_alpha"], alphas[1]) and inst["instance_alpha"].dtype == np.uint8
    assert inst["original_image_mask"].dtype == np.bool_ and inst["inpainted_delta"].dtype == np.int16
    assert inst["score"] == np.float32(0.9)
    masks = instance_masks(loaded, size=(16, 24))
    assert [m.shape for m in masks] == [torch.Size([16, 24])] * 2
    assert [round(m.float().mean().item(), 3) for m in masks] == [0.25, 0.5]


def _peak(call) -> tuple[BaseException | None, int]:
    """(what `call()` raised, or None; peak bytes traced by tracemalloc while it ran)."""
    tracemalloc.start()
    try:
        call()
        raised = None
    except (UnsafePickleError, MuLAnFormatError) as e:
        raised = e
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return raised, peak


@pytest.mark.parametrize("name, payload, message", [
    ("bytearray", _Payload(bytearray, (1 << 30,)), r"refusing bytearray\(int\)"),
    ("bytes", _Payload(bytes, (1 << 30,)), r"refusing bytes\(\.\.\.\) with arguments"),
    ("ndarray", _Payload(np.ndarray, ((1 << 28,),)), r"refusing a direct numpy\.ndarray\(\.\.\.\) call"),
    ("reconstruct", _Payload(_reconstruct, (np.ndarray, (1 << 28,), b"b")),
     r"refusing numpy _reconstruct"),
    ("codec", _Payload(codecs.encode, ("x" * 64, "utf-32")), r"only latin1"),
    ("object array", np.array([1, None], dtype=object), r"refusing numpy dtype dtype\('O'\)"),
])
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_allocation_payloads_are_refused_with_bounded_memory(tmp_path, name, payload, message, protocol):
    """A few hundred bytes that would allocate 1 GiB (or an object array, which numpy fills from raw pointers)."""
    path = write_pzl(tmp_path / "evil.p.zl", {"instances": {0: {"instance_alpha": payload}}}, protocol)
    assert path.stat().st_size < 300
    raised, peak = _peak(lambda: load_annotation(path))
    assert isinstance(raised, UnsafePickleError) and "evil.p.zl" in str(raised), raised
    assert re.search(message, str(raised)), str(raised)
    # the 16 MiB decompression floor is never reached by a few hundred bytes: everything here is the unpickler's
    # own bookkeeping, far below the 1 GiB the payload asks for
    assert peak < 1 << 20, peak


def test_zlib_bomb_is_refused_with_bounded_memory(tmp_path):
    """256 MiB of zeros in ~250 KB: refused after the cap (64x the file, at least 16 MiB), never inflated whole."""
    path = tmp_path / "bomb.p.zl"
    packer = zlib.compressobj(9)
    with path.open("wb") as fh:
        for _ in range(256):
            fh.write(packer.compress(bytes(1 << 20)))
        fh.write(packer.flush())
    raw = path.stat().st_size
    limit = decompress_limit(raw)
    assert limit == max(MIN_LIMIT, MAX_RATIO * raw) and limit < 32 << 20
    raised, peak = _peak(lambda: load_annotation(path))
    assert isinstance(raised, MuLAnFormatError) and "decompresses to more than" in str(raised), raised
    assert "zip bomb" in str(raised) and "bomb.p.zl" in str(raised)
    # what may be alive at the refusal: the output kept so far (<= limit), the chunk being inflated (CPython builds
    # it in blocks, then joins them: <= 2 chunks), the file's bytes and zlib's copy of their unconsumed tail (each
    # <= raw), plus 1 MiB for everything else; the old loader inflated all 256 MiB first
    assert peak < limit + 2 * CHUNK + 2 * raw + (1 << 20), (peak, limit)
    assert decompress_limit(10 ** 12) == MAX_BYTES, "a hard ceiling whatever the file size"


def test_decompression_cap_is_adjustable(tmp_path):
    ann = annotation([alpha_with_area(64, 64, 0.5)])
    path = write_pzl(tmp_path / "img.p.zl", ann)
    assert len(load_annotation(path)["instances"]) == 1
    with pytest.raises(MuLAnFormatError, match="pass a larger max_ratio / max_bytes"):
        load_annotation(path, max_bytes=1024)
    (tmp_path / "cut.p.zl").write_bytes(path.read_bytes()[:-8])
    with pytest.raises(MuLAnFormatError, match="truncated zlib stream"):
        load_annotation(tmp_path / "cut.p.zl")


def test_corrupt_annotation_errors(tmp_path):
    (tmp_path / "bad.p.zl").write_bytes(b"definitely not zlib")
    with pytest.raises(MuLAnFormatError, match="not a zlib-compressed"):
        load_annotation(tmp_path / "bad.p.zl")
    truncated = zlib.compress(pickle.dumps({"instances": {}}, protocol=4)[:-5])
    (tmp_path / "cut.p.zl").write_bytes(truncated)
    with pytest.raises(MuLAnFormatError, match="corrupt annotation pickle"):
        load_annotation(tmp_path / "cut.p.zl")
    write_pzl(tmp_path / "shape.p.zl", [1, 2, 3])
    with pytest.raises(MuLAnFormatError, match="instances"):
        load_annotation(tmp_path / "shape.p.zl")
    write_pzl(tmp_path / "ok.p.zl", annotation([alpha_with_area(8, 8, 0.5)]))
    with pytest.raises(MuLAnFormatError):
        SemanticMaskLibrary.from_annotations(tmp_path)
    lib = SemanticMaskLibrary.from_annotations(tmp_path, skip_corrupt=True, size=(8, 8))
    assert len(lib) == 1 and lib.image_ids == ["ok"]


def test_threshold_area_filter_and_limit():
    h, w = 20, 30
    areas = [0.005, 0.3, 0.9, 0.02, 0.85, 0.1, 0.2, 0.4, 0.5, 0.6, 0.7, 0.05, 0.15, 0.25]
    alphas = [alpha_with_area(h, w, a) for a in areas]
    alphas.insert(2, alpha_with_area(h, w, 0.5, value=120))
    rgba = np.zeros((h, w, 4), np.float32)
    rgba[..., 3] = alpha_with_area(h, w, 0.45) / 255.0
    alphas.insert(4, rgba)
    masks = instance_masks(annotation([alphas[0], *alphas[1:]]), size=(h, w))
    got = [round(m.float().mean().item(), 3) for m in masks]
    assert got == [0.3, 0.45, 0.02, 0.1, 0.2, 0.4, 0.5, 0.6, 0.7, 0.05]
    assert len(instance_masks(annotation(alphas), size=(h, w), max_instances=3)) == 3
    small = instance_masks(annotation([alpha_with_area(h, w, 0.5)], as_dict=False), size=(10, 15))
    assert small[0].shape == (10, 15) and small[0].float().mean().item() == pytest.approx(0.5)


def test_library_cache_and_licence_warning(tmp_path, capsys):
    ann_dir = tmp_path / "ann"
    ann_dir.mkdir()
    for i in range(3):
        write_pzl(ann_dir / f"{i:04d}.p.zl", annotation([alpha_with_area(32, 32, 0.1 * (i + 1)),
                                                         alpha_with_area(32, 32, 0.95)]))
    cache = tmp_path / "cache" / "mulan.safetensors"
    lib = SemanticMaskLibrary.from_annotations(ann_dir, size=(16, 16), cache_path=cache)
    err = capsys.readouterr().err
    assert "CC BY-NC-SA 4.0" in err and "NON-COMMERCIAL" in err and LICENCE_WARNING in err
    assert len(lib) == 3 and lib.image_ids == ["0000", "0001", "0002"]
    assert cache.is_file()
    stamp = cache.stat().st_mtime_ns
    again = SemanticMaskLibrary.from_annotations(ann_dir, size=(16, 16), cache_path=cache)
    assert cache.stat().st_mtime_ns == stamp and torch.equal(again.masks, lib.masks)
    assert "CC BY-NC-SA 4.0" in capsys.readouterr().err
    write_pzl(ann_dir / "0003.p.zl", annotation([alpha_with_area(32, 32, 0.5)]))
    assert len(SemanticMaskLibrary.from_annotations(ann_dir, size=(16, 16), cache_path=cache)) == 4
    assert len(SemanticMaskLibrary.from_cache(cache)) == 4
    g = torch.Generator().manual_seed(0)
    drawn = lib.sample(g, size=(8, 12))
    assert drawn.shape == (8, 12) and drawn.dtype == torch.bool and drawn.any()


@pytest.fixture()
def object_dir(tmp_path: Path) -> Path:
    """Per-sample object masks at latent resolution for five samples."""
    d = tmp_path / "objects"
    f, h, w = GRID
    for s in range(5):
        masks = torch.zeros(3, f, h, w, dtype=torch.bool)
        masks[0, :, 2:8, 3:12] = True
        masks[1, :, 5 + s:12, 10:20] = True
        masks[2, :, :, :] = True
        save_object_masks(d / f"clip{s}.safetensors", masks, ["cat", "ball", "everything"])
    return d


def test_object_mask_files(object_dir, tmp_path):
    obj = load_object_masks(object_dir / "clip0.safetensors")
    assert obj.names == ["cat", "ball", "everything"] and obj.masks.shape == (3, *GRID)
    with pytest.raises(ValueError, match="names"):
        save_object_masks(tmp_path / "x.safetensors", torch.zeros(2, 4, 4), ["one"])
    sampler = MaskSampler(MaskStrategyConfig(mode="semantic", semantic_mask_dir=str(object_dir)), seed=1)
    kinds = {sampler.sample(GRID, "clip1").kind for _ in range(40)}
    assert kinds == {"cat", "ball"}
    missing = sampler.sample(GRID, "no_such_clip")
    assert missing.source == "random" and missing.fallback


def test_mixed_ratio_and_area_bounds(object_dir):
    cfg = MaskStrategyConfig(mode="mixed", semantic_mask_dir=str(object_dir))
    sampler = MaskSampler(cfg, seed=1234)
    n = 1000
    draws = [sampler.sample(GRID, f"clip{i % 5}") for i in range(n)]
    objects = sum(d.source == "object" for d in draws)
    sd = math.sqrt(n * 0.7 * 0.3)
    assert abs(objects - 0.7 * n) <= 4 * sd
    randoms = [d for d in draws if d.source == "random"]
    assert len(randoms) == n - objects and not any(d.fallback for d in draws)
    assert {d.kind for d in randoms} == {"rect", "ellipse", "brush"}
    for d in randoms:
        assert d.mask.shape == GRID and d.mask.dtype == torch.bool
        assert cfg.min_area <= d.area <= cfg.max_area
        assert torch.equal(d.mask, d.mask[:1].expand_as(d.mask))
    g = torch.Generator().manual_seed(5)
    for grid in [(1, 128, 192), (2, 4, 6)]:
        for _ in range(30):
            mask, _ = random_mask(grid, g, 0.05, 0.6)
            assert 0.05 <= mask.float().mean().item() <= 0.6


def test_draws_are_reproducible(object_dir):
    cfg = MaskStrategyConfig(semantic_mask_dir=str(object_dir))

    def sequence(sampler: MaskSampler, k: int) -> list[tuple[str, str, torch.Tensor]]:
        """The next k draws as (source, kind, mask)."""
        return [(d.source, d.kind, d.mask) for d in (sampler.sample(GRID, f"clip{i % 5}") for i in range(k))]

    def same(a: list, b: list) -> bool:
        """Whether two draw sequences are identical."""
        return len(a) == len(b) and all(x[:2] == y[:2] and torch.equal(x[2], y[2]) for x, y in zip(a, b))

    a, b = sequence(MaskSampler(cfg, seed=7), 40), sequence(MaskSampler(cfg, seed=7), 40)
    assert same(a, b)
    assert not same(a, sequence(MaskSampler(cfg, seed=8), 40))
    resumed = MaskSampler(cfg, seed=7)
    sequence(resumed, 15)
    state = resumed.state_dict()
    tail = sequence(resumed, 25)
    fresh = MaskSampler(cfg, seed=0)
    fresh.load_state_dict(state)
    assert same(sequence(fresh, 25), tail) and same(a[15:], tail)


def test_library_source_and_config_validation(tmp_path):
    lib = SemanticMaskLibrary(torch.ones(2, 8, 8, dtype=torch.bool).tril(), ["a", "b"], (8, 8), warn=False)
    draw = MaskSampler(MaskStrategyConfig(mode="semantic"), library=lib).sample(GRID)
    assert draw.source == "library" and draw.mask.shape == GRID and draw.mask.any()
    for kwargs, field in [({"mode": "objects"}, "mode"), ({"semantic_mask_ratio": 1.5}, "semantic_mask_ratio"),
                          ({"min_area": 0.7}, "min_area"), ({"shapes": ("star",)}, "shapes")]:
        with pytest.raises(ValueError, match=field):
            MaskStrategyConfig(**kwargs)
    with pytest.raises(ValueError, match="semantic_mask_dir"):
        MaskSampler(MaskStrategyConfig(mode="semantic"))
    with pytest.raises(ValueError, match="cannot hold"):
        random_mask((1, 1, 2), torch.Generator(), 0.6, 0.9)
