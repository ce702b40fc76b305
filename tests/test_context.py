"""Frames/mask validation and padding onto the LTX-2 grid before an edit (clear errors, nothing silently changed)."""

import pytest
import torch

from editctrl_core.checks import NonFiniteError
from editctrl_core.edit.context import conform, fill_latents, prepare_edit
from editctrl_core.edit.geometry import GeometryError, grid_for
from editctrl_core.loading.models import build_vae, load_preset


def test_mismatched_mask_and_video_sizes_are_refused():
    frames = torch.rand(9, 64, 96, 3)
    with pytest.raises(GeometryError, match=r"mask \(9, 64, 64\) does not match the video \(9, 64, 96\)"):
        conform(frames, torch.ones(9, 64, 64))
    with pytest.raises(GeometryError, match="IMAGE batch"):
        conform(torch.rand(9, 64, 96), torch.ones(9, 64, 96))


def test_single_mask_frame_is_broadcast_and_strict_mode_names_every_problem_at_once():
    frames = torch.rand(9, 64, 96, 3)
    _, mask, padding = conform(frames, torch.ones(64, 96), "strict")
    assert mask.shape == (9, 64, 96) and padding.is_identity and padding.describe() == ""
    with pytest.raises(GeometryError) as err:
        conform(torch.rand(10, 70, 100, 3), torch.ones(10, 70, 100), "strict")
    message = str(err.value)
    assert "10 frames is not 8n+1" in message and "pad to 17 or trim to 9" in message
    assert "height 70 px" in message and "pad to 96 or crop to 64" in message
    assert "width 100 px" in message and "pad to 128 or crop to 96" in message
    with pytest.raises(GeometryError) as err:
        conform(torch.rand(2, 64, 64, 3), torch.ones(2, 64, 64), "strict")
    assert "pad to 9" in str(err.value) and "trim to 1 " not in str(err.value)
    with pytest.raises(GeometryError, match="not a multiple of 32"):
        grid_for(9, 70, 96)
    with pytest.raises(GeometryError, match="geometry must be one of pad, strict"):
        conform(frames, torch.ones(64, 96), "snap")


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 33, 31), (12, 70, 100), (9, 64, 96), (90, 35, 35)])
def test_padding_round_trips_any_shape_onto_the_grid_and_back(shape):
    f, h, w = shape
    frames = torch.rand(f, h, w, 3)
    mask = torch.rand(f, h, w)
    out, out_mask, padding = conform(frames, mask)
    pf, ph, pw = padding.padded_shape
    assert out.shape == (pf, ph, pw, 3) and out_mask.shape == (pf, ph, pw)
    assert (pf - 1) % 8 == 0 and ph % 32 == 0 and pw % 32 == 0
    assert 0 <= pf - f < 8 and 0 <= ph - h < 32 and 0 <= pw - w < 32
    grid_for(pf, ph, pw)
    assert torch.equal(padding.crop(out), frames) and torch.equal(padding.crop(out_mask), mask)
    tail = out[f:, padding.top:padding.top + h, padding.left:padding.left + w]
    assert torch.equal(tail, frames[-1:].expand(pf - f, -1, -1, -1))
    if not padding.is_identity:
        assert f"padded {f} frames at {h}x{w} to {pf} frames at {ph}x{pw}" in padding.describe()


def test_padding_replicates_edges_and_the_last_frame():
    frames = torch.rand(3, 40, 50, 3)
    out, _, padding = conform(frames, torch.zeros(3, 40, 50))
    assert padding.padded_shape == (9, 64, 64) and (padding.top, padding.bottom) == (12, 12)
    assert (padding.left, padding.right) == (7, 7)
    assert torch.equal(out[3:, 12:52, 7:57], frames[-1:].expand(6, -1, -1, -1))
    assert torch.equal(out[:3, 0, 7:57], frames[:, 0])
    assert torch.equal(out[:3, 12:52, 63], frames[:, :, -1])
    with pytest.raises(GeometryError, match="empty"):
        conform(torch.rand(0, 40, 50, 3), torch.zeros(0, 40, 50))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_frames_or_mask_are_refused_by_name(bad):
    frames, mask = torch.rand(9, 64, 64, 3), torch.zeros(9, 64, 64)
    frames[4, 10, 10, 1] = bad
    with pytest.raises(NonFiniteError, match=r"frames holds 1 non-finite values.*index \(4, 10, 10, 1\)"):
        conform(frames, mask)
    frames[4, 10, 10, 1] = 0.5
    mask[0, 3, 3] = bad
    with pytest.raises(NonFiniteError, match="mask holds 1 non-finite"):
        conform(frames, mask)


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
