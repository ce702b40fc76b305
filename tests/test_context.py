"""Frames/mask validation and snapping before an edit (clear errors, nothing silently changed)."""

import pytest
import torch

from editctrl_core.context import conform, fill_latents, prepare_edit
from editctrl_core.geometry import GeometryError, grid_for, snap_shape
from editctrl_core.models import build_vae, load_preset


def test_mismatched_mask_and_video_sizes_are_refused():
    frames = torch.rand(9, 64, 96, 3)
    with pytest.raises(GeometryError, match=r"mask \(9, 64, 64\) does not match the video \(9, 64, 96\)"):
        conform(frames, torch.ones(9, 64, 64), snap=False)
    with pytest.raises(GeometryError, match="IMAGE batch"):
        conform(torch.rand(9, 64, 96), torch.ones(9, 64, 96), snap=False)


def test_single_mask_frame_is_broadcast_and_frame_rules_enforced():
    frames = torch.rand(9, 64, 96, 3)
    _, mask, note = conform(frames, torch.ones(64, 96), snap=False)
    assert mask.shape == (9, 64, 96) and note == ""
    with pytest.raises(GeometryError, match="8n\\+1"):
        conform(torch.rand(10, 64, 96, 3), torch.ones(10, 64, 96), snap=False)
    with pytest.raises(GeometryError, match="multiples of 32"):
        grid_for(9, 70, 96)


def test_snap_trims_and_centre_crops_and_says_so():
    frames = torch.arange(12 * 70 * 100 * 3, dtype=torch.float32).reshape(12, 70, 100, 3)
    out, mask, note = conform(frames, torch.ones(12, 70, 100), snap=True)
    assert out.shape == (9, 64, 96, 3) and mask.shape == (9, 64, 96)
    assert torch.equal(out, frames[:9, 3:67, 2:98])
    assert "12 frames at 70x100" in note and "9 frames at 64x96" in note
    assert snap_shape(12, 70, 100) == (9, 64, 96)
    with pytest.raises(GeometryError, match="too small"):
        snap_shape(4, 20, 100)


def test_prepare_edit_blanks_the_background_and_maps_the_mask():
    vae = build_vae(load_preset("tiny"))
    frames = torch.rand(9, 64, 96, 3)
    mask = torch.zeros(9, 64, 96)
    mask[:, 0:20, 0:20] = 1
    ctx = prepare_edit(vae, frames, mask)
    assert ctx.token_mask.shape == (2, 2, 3) and bool(ctx.token_mask[:, 0, 0].all())
    assert int(ctx.token_mask.sum()) == 2
    keep = ~ctx.token_mask[None, None].expand_as(ctx.source_latents)
    assert torch.equal(ctx.background_latents[keep], ctx.source_latents[keep])
    grey = fill_latents(vae, (9, 64, 96))
    assert torch.equal(ctx.background_latents[~keep], grey.expand_as(ctx.source_latents)[~keep])
    assert not torch.equal(ctx.background_latents, ctx.source_latents)
    empty = prepare_edit(vae, frames, torch.zeros(9, 64, 96))
    assert torch.equal(empty.background_latents, empty.source_latents) and not bool(empty.token_mask.any())


def test_prepare_edit_encodes_the_clip_once_and_reuses_the_grey_fill():
    """One VAE encode per edit: the grey-clip latents that blank the edit region are cached per VAE and shape."""
    vae = build_vae(load_preset("tiny"))
    calls = []
    vae.encoder.register_forward_pre_hook(lambda *_: calls.append(1))
    frames, mask = torch.rand(9, 64, 96, 3), torch.zeros(9, 64, 96)
    mask[:, 32:, 32:64] = 1
    first = prepare_edit(vae, frames, mask)
    assert len(calls) == 2  # the clip, then the grey fill (first edit of this shape)
    second = prepare_edit(vae, frames.flip(0), mask)
    assert len(calls) == 3  # the clip only
    assert not torch.equal(first.source_latents, second.source_latents)
    prepare_edit(vae, torch.rand(9, 64, 64, 3), torch.ones(9, 64, 64))
    assert len(calls) == 5  # a new shape encodes its grey fill once
