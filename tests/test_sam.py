"""SAM / SAM2 / SAM3 box refinement on tiny seeded models: silhouettes inside boxes, propagation over all frames."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from editctrl_core.perception.object_masks import box_mask, dilate_mask
from editctrl_core.perception.sam import (
    SAM_FAMILIES,
    SamBundle,
    SamLoadError,
    load_sam,
    refine,
    refine_tracks,
    tiny_sam,
    warp_to_box,
)

FRAMES, HEIGHT, WIDTH = 5, 48, 64
BOXES = {0: [(10.0, 8.0, 40.0, 30.0), (44.0, 20.0, 60.0, 44.0)], 4: [(14.0, 12.0, 44.0, 34.0), None]}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run faster on one intra-op thread (no thread hand-off on a busy 2-core CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    """A small ComfyUI IMAGE batch [F,H,W,3]."""
    return torch.rand(FRAMES, HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(0))


def _allowed(box: tuple, margin: float = 0.1, min_px: float = 4.0) -> torch.Tensor:
    """Pixels a keyframe silhouette may cover: the box dilated by the documented margin (rounded up)."""
    pad = max(min_px, margin * max(box[2] - box[0], box[3] - box[1]))
    return dilate_mask(box_mask(box, HEIGHT, WIDTH), math.ceil(pad))


@pytest.mark.parametrize("family", SAM_FAMILIES)
def test_refine_silhouettes_stay_in_boxes_and_cover_every_frame(family: str, clip: torch.Tensor) -> None:
    """Per family: one mask per input frame, keyframe silhouettes inside the dilated box, not just the box."""
    bundle = tiny_sam(family, seed=0)
    calls: list[int] = []
    handle = bundle.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            tracks = refine_tracks(bundle, clip, BOXES)
        elapsed = time.perf_counter() - start
    finally:
        handle.remove()
    print(f"\ntiny {family}: 2 objects x {FRAMES} frames ({HEIGHT}x{WIDTH}) in {elapsed:.2f}s, "
          f"{len(calls)} model calls")
    assert tracks.shape == (2, FRAMES, HEIGHT, WIDTH)
    assert set(tracks.unique().tolist()) <= {0.0, 1.0}
    for k, per_object in BOXES.items():
        for i, box in enumerate(per_object):
            if box is None:
                continue
            silhouette = tracks[i, k]
            assert silhouette.sum() > 0
            assert (silhouette * (1 - _allowed(box))).sum() == 0
    keyframe_union = torch.stack([tracks[0, 0], tracks[0, 4], tracks[1, 0]])
    boxes_union = torch.stack([box_mask(BOXES[0][0], HEIGHT, WIDTH), box_mask(BOXES[4][0], HEIGHT, WIDTH),
                               box_mask(BOXES[0][1], HEIGHT, WIDTH)])
    assert not torch.equal(keyframe_union, boxes_union)
    if bundle.is_video:
        assert len(calls) >= 2 * FRAMES
    else:
        assert len(calls) == 2
        assert torch.equal(tracks[1, 1:], tracks[1, 0].expand(FRAMES - 1, -1, -1))
        assert torch.equal(tracks[0, 1, 1:, 1:], tracks[0, 0, :-1, :-1])
        assert tracks[0, 1, 0].sum() == 0 and tracks[0, 1, :, 0].sum() == 0
    assert torch.equal(refine(bundle, clip, BOXES), tracks.amax(dim=0))


def test_clipping_is_the_raw_mask_times_the_grown_box(clip: torch.Tensor) -> None:
    """With clipping off the keyframe mask is SAM's raw silhouette; clipping only removes what lies outside."""
    bundle = tiny_sam("sam2", seed=0)
    raw = refine_tracks(bundle, clip, {0: [BOXES[0][0]]}, clip_margin=None)[0, 0]
    clipped = refine_tracks(bundle, clip, {0: [BOXES[0][0]]})[0, 0]
    assert torch.equal(clipped, raw * _allowed(BOXES[0][0]))
    assert raw.sum() > clipped.sum()


def test_empty_silhouette_falls_back_to_the_box(clip: torch.Tensor) -> None:
    """When SAM finds nothing the box is used, with a warning that says so."""
    bundle = tiny_sam("sam", seed=0)
    with pytest.warns(UserWarning, match="empty mask"):
        out = refine_tracks(bundle, clip, {2: [BOXES[0][0]]}, threshold=1e9)
    assert torch.equal(out[0, 2], box_mask(BOXES[0][0], HEIGHT, WIDTH))


def test_warp_to_box_translates_and_scales() -> None:
    """A silhouette moves with its box, and doubles when the box doubles."""
    mask = box_mask((4, 4, 8, 6), 20, 20)
    assert torch.equal(warp_to_box(mask, (4, 4, 8, 6), (7, 9, 11, 11)), box_mask((7, 9, 11, 11), 20, 20))
    assert torch.equal(warp_to_box(mask, (4, 4, 8, 6), (4, 4, 12, 8)), box_mask((4, 4, 12, 8), 20, 20))


@pytest.mark.parametrize("family", ["sam2_video", "sam3_video"])
def test_video_checkpoint_loads_from_folder(family: str, clip: torch.Tensor, tmp_path: Path) -> None:
    """A saved tiny video checkpoint loads back offline (as video or image model) and gives the same masks."""
    bundle = tiny_sam(family, seed=1)
    folder = tmp_path / family
    bundle.model.save_pretrained(folder)
    bundle.processor.save_pretrained(folder)
    loaded = load_sam(folder, dtype="float32")
    assert loaded.family == family and loaded.is_video
    boxes = {2: [BOXES[0][0]]}
    assert torch.equal(refine(loaded, clip, boxes), refine(bundle, clip, boxes))
    image = load_sam(folder, dtype="float32", video=False)
    assert not image.is_video and image.family == family.removesuffix("_video")
    assert refine(image, clip, boxes).shape == (FRAMES, HEIGHT, WIDTH)
    loaded.unload()
    with pytest.raises(RuntimeError, match="unloaded"):
        refine(loaded, clip, boxes)


def _pickle_only_folder(bundle: SamBundle, folder: Path) -> Path:
    """A SAM folder as older releases ship it: config, processor and a pickled `pytorch_model.bin`, no safetensors."""
    folder.mkdir(parents=True)
    bundle.model.config.save_pretrained(folder)
    bundle.processor.save_pretrained(folder)
    torch.save(bundle.model.state_dict(), folder / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize(("family", "weights"), [("sam2_video", "pytorch_model.bin"), ("sam", "model.pt")])
def test_pickle_only_folders_are_refused_with_the_conversion(family: str, weights: str, clip: torch.Tensor,
                                                              tmp_path: Path) -> None:
    """A folder with only pickle weights is refused (never unpickled); the command in the message converts it."""
    bundle = tiny_sam(family, seed=2)
    folder = _pickle_only_folder(bundle, tmp_path / family)
    (folder / "pytorch_model.bin").rename(folder / weights)
    with pytest.raises(SamLoadError) as info:
        load_sam(folder, dtype="float32")
    message = str(info.value)
    assert f"only pickle weights ({weights})" in message and "unpickling a file can run code" in message
    assert "model.safetensors" in message and not list(folder.glob("*.safetensors"))
    if weights != "pytorch_model.bin":
        return
    command = re.search(r'python -c "(.*?)"', message).group(1)
    assert "Sam2VideoModel" in command, "the conversion keeps the video (memory) weights of a video checkpoint"
    subprocess.run([sys.executable, "-c", command], check=True, capture_output=True, timeout=300)
    assert (folder / "model.safetensors").is_file()
    loaded = load_sam(folder, dtype="float32")
    assert loaded.is_video
    assert torch.equal(refine(loaded, clip, {2: [BOXES[0][0]]}), refine(bundle, clip, {2: [BOXES[0][0]]}))


def test_safetensors_are_read_and_a_pickle_beside_them_is_not(clip: torch.Tensor, tmp_path: Path) -> None:
    """With model.safetensors present a broken .bin next to it is never opened; no weights at all is named too."""
    bundle = tiny_sam("sam", seed=3)
    folder = tmp_path / "sam"
    bundle.model.save_pretrained(folder)
    bundle.processor.save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04 not a pickle that torch.load could read")
    loaded = load_sam(folder, dtype="float32")
    assert torch.equal(refine(loaded, clip, {0: [BOXES[0][0]]}), refine(bundle, clip, {0: [BOXES[0][0]]}))
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(SamLoadError, match=r"has no \.safetensors weights; put the model's \*\.safetensors files"):
        load_sam(folder)
