"""Boundary blending: exact distances, pixel falloffs on the LTX token grid, schedules, and exact source outside."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from editctrl_core.edit.blend import (
    BlendSchedule,
    BlendSettings,
    BoundaryBlender,
    blend_clean_step,
    blend_step,
    composite,
    compute_boundary_blend_mask,
    dilation_for_falloff,
    feather_mask,
    pixel_distance,
    renoise,
    renoise_alpha,
    scheduled_alpha,
)
from editctrl_core.edit.masks import dilate_token_mask, pixel_mask_to_token_mask


def _brute_distance(mask: torch.Tensor) -> torch.Tensor:
    """O(P·Q) Euclidean distance of every pixel of a 2D mask to its nearest True pixel (inf when empty)."""
    h, w = mask.shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pts = torch.stack([ys.flatten(), xs.flatten()], dim=1).double()
    hits = pts[mask.flatten()]
    if hits.shape[0] == 0:
        return torch.full((h, w), math.inf)
    return torch.cdist(pts, hits).min(dim=1).values.reshape(h, w).float()


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 17), w=st.integers(1, 17), density=st.floats(0.0, 0.3), seed=st.integers(0, 2**16),
       limit=st.one_of(st.none(), st.floats(0.0, 12.0)))
def test_pixel_distance_is_exact(h, w, density, seed, limit):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(3, h, w, generator=gen) < density
    mask[1] = mask[0]
    got = pixel_distance(mask, limit)
    for f in range(3):
        ref = _brute_distance(mask[f])
        if limit is not None:
            ref = torch.where(ref > limit, torch.full_like(ref, math.inf), ref)
        finite = torch.isfinite(ref)
        assert torch.equal(torch.isfinite(got[f]), finite)
        assert torch.allclose(got[f][finite], ref[finite], atol=1e-5)


def _column_mask(frames: int, height: int, width: int, cols: int) -> torch.Tensor:
    """Pixel mask covering the first `cols` pixel columns of every frame (a straight vertical edge)."""
    mask = torch.zeros(frames, height, width)
    mask[..., :cols] = 1.0
    return mask


def test_falloff_in_pixels_spans_the_right_number_of_tokens():
    mask = _column_mask(1, 32, 8 * 32, 64)
    alpha64 = renoise_alpha(mask, 64)[0, 0]
    assert alpha64.shape == (8,)
    assert torch.equal(alpha64[:2], torch.ones(2))
    assert 1 > alpha64[2] > alpha64[3] > 0
    assert torch.equal(alpha64[4:], torch.zeros(4))
    alpha32 = renoise_alpha(mask, 32)[0, 0]
    assert 1 > alpha32[2] > 0 and torch.equal(alpha32[3:], torch.zeros(5))
    alpha128 = renoise_alpha(mask, 128)[0, 0]
    assert bool((alpha128[2:6] > 0).all()) and torch.equal(alpha128[6:], torch.zeros(2))


@pytest.mark.parametrize("falloff", [0.5, 1, 20, 32, 33, 64, 65, 100])
def test_required_dilation_covers_every_nonzero_token_and_no_more(falloff):
    mask = torch.zeros(1, 5 * 32, 12 * 32)
    mask[0, 70:90, 45:96] = 1.0
    alpha = renoise_alpha(mask, falloff)
    covered = pixel_mask_to_token_mask(mask)
    need = dilation_for_falloff(falloff)
    assert not bool(((alpha > 0) & ~dilate_token_mask(covered, spatial=need)).any())
    if need > 0:
        assert bool(((alpha > 0) & ~dilate_token_mask(covered, spatial=need - 1)).any())


def test_hard_alpha_is_the_token_mask_and_covered_tokens_are_one():
    gen = torch.Generator().manual_seed(3)
    mask = (torch.rand(17, 64, 96, generator=gen) > 0.995).float()
    tokens = pixel_mask_to_token_mask(mask)
    assert torch.equal(renoise_alpha(mask, 0), tokens.float())
    soft = renoise_alpha(mask, 48)
    assert torch.equal(soft[tokens], torch.ones(int(tokens.sum())))


def test_alpha_follows_ltx_causal_temporal_grouping():
    mask = torch.zeros(17, 64, 64)
    mask[0, :32, :32] = 1.0
    mask[12, 32:, 32:] = 1.0
    alpha = renoise_alpha(mask, 40)
    assert alpha.shape == (3, 2, 2)
    assert alpha[0, 0, 0] == 1 and alpha[0, 1, 1] < 1
    assert alpha[1, 0, 0] == 0 and alpha[1, 1, 1] == 0
    assert alpha[2, 1, 1] == 1 and alpha[2, 0, 0] < 1


def _edge_cases(frames: int, height: int, width: int) -> dict[str, torch.Tensor]:
    """Empty, full, one-pixel and border-touching masks."""
    empty = torch.zeros(frames, height, width)
    full = torch.ones(frames, height, width)
    one = empty.clone()
    one[-1, height // 2, width // 3] = 1.0
    border = empty.clone()
    border[:, :5, :] = 1.0
    border[:, :, -3:] = 1.0
    return {"empty": empty, "full": full, "one": one, "border": border}


@pytest.mark.parametrize("case", ["empty", "full", "one", "border"])
def test_no_nan_or_out_of_range_for_edge_case_masks(case):
    mask = _edge_cases(9, 64, 96)[case]
    tokens = pixel_mask_to_token_mask(mask)
    for alpha in (renoise_alpha(mask, 64), feather_mask(mask, 24), compute_boundary_blend_mask(tokens),
                  compute_boundary_blend_mask(tokens[0])):
        assert bool(torch.isfinite(alpha).all())
        assert float(alpha.min()) >= 0.0 and float(alpha.max()) <= 1.0
    if case == "empty":
        assert torch.equal(renoise_alpha(mask, 64), torch.zeros(2, 2, 3))
        assert torch.equal(feather_mask(mask, 24), torch.zeros_like(mask))
    if case == "full":
        assert torch.equal(renoise_alpha(mask, 64), torch.ones(2, 2, 3))
        assert torch.equal(feather_mask(mask, 24), torch.ones_like(mask))
    if case == "one":
        assert renoise_alpha(mask, 64)[1, 1, 1] == 1
        assert feather_mask(mask, 24)[-1, 32, 32] == 1


@pytest.mark.parametrize("edge", [37, 64, 101])
def test_alpha_is_monotone_across_an_edge(edge):
    mask = _column_mask(1, 64, 256, edge)
    tok = renoise_alpha(mask, 80)[0, 1]
    assert bool((tok[1:] <= tok[:-1]).all()) and tok[0] == 1 and tok[-1] == 0
    pix = feather_mask(mask, 30)[0, 10]
    assert bool((pix[1:] <= pix[:-1]).all())
    assert bool((pix[edge:edge + 29] > 0).all()) and torch.equal(pix[edge + 29:], torch.zeros(256 - edge - 29))
    seed = compute_boundary_blend_mask(pixel_mask_to_token_mask(mask))[0, 1]
    assert bool((seed[1:] <= seed[:-1]).all())


def test_feather_is_monotone_along_rays_of_a_disk():
    ys, xs = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    mask = (((ys - 48) ** 2 + (xs - 48) ** 2) <= 15**2).float()[None]
    alpha = feather_mask(mask, 20)[0]
    for ray in (alpha[48, 48:], alpha[48, :49].flip(0), alpha[48:, 48], torch.diagonal(alpha)[48:]):
        assert bool((ray[1:] <= ray[:-1]).all())
    far = ((ys - 48) ** 2 + (xs - 48) ** 2).sqrt() >= 15 + 20 + 1
    assert torch.equal(alpha[far], torch.zeros(int(far.sum())))


def test_renoised_blend_outside_the_falloff_is_the_renoised_source_exactly():
    gen = torch.Generator().manual_seed(0)
    mask = torch.zeros(9, 128, 192)
    mask[:, 40:80, 60:100] = 1.0
    alpha = renoise_alpha(mask, 40)
    shape = (2, 4, *alpha.shape)
    x, source, noise = (torch.randn(shape, generator=gen) for _ in range(3))
    sigma = torch.tensor([0.37, 0.81])
    out = blend_step(x, source, noise, sigma, alpha)
    target = renoise(source, noise, sigma)
    outside = (alpha == 0).expand_as(x)
    inside = (alpha == 1).expand_as(x)
    ramp = ((alpha > 0) & (alpha < 1)).expand_as(x)
    assert outside.any() and inside.any() and ramp.any()
    assert torch.equal(out[outside], target[outside])
    assert torch.equal(out[inside], x[inside])
    lo, hi = torch.minimum(x, target), torch.maximum(x, target)
    assert bool(((out[ramp] >= lo[ramp] - 1e-6) & (out[ramp] <= hi[ramp] + 1e-6)).all())
    assert not torch.equal(out[ramp], x[ramp]) and not torch.equal(out[ramp], target[ramp])
    final = blend_step(x, source, noise, 0.0, alpha)
    assert torch.equal(final[outside], source[outside])
    expected = (1 - 0.37) * source[0] + 0.37 * noise[0]
    assert torch.allclose(target[0], expected)


def test_token_major_gathered_layout_matches_the_grid_layout():
    gen = torch.Generator().manual_seed(1)
    mask = torch.zeros(9, 96, 128)
    mask[:, 30:60, 40:70] = 1.0
    blender = BoundaryBlender(mask, BlendSettings(falloff_px=48, hard_fraction=0.25))
    f, h, w = blender.hard.shape
    x, source, noise = (torch.randn(1, 3, f, h, w, generator=gen) for _ in range(3))
    full = blender.step(x, source, noise, 0.4, 3, 4)
    idx = torch.nonzero(dilate_token_mask(blender.hard > 0, spatial=blender.required_dilation).flatten()).flatten()
    tok = lambda t: t.flatten(2).transpose(1, 2)  # noqa: E731
    gathered = blender.step(tok(x)[:, idx], tok(source)[:, idx], tok(noise)[:, idx], 0.4, 3, 4, idx=idx)
    assert torch.equal(gathered, tok(full)[:, idx])
    rest = torch.ones(f * h * w, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(tok(full)[:, rest], tok(renoise(source, noise, 0.4))[:, rest])


def test_seed_distance_mask_reproduces_the_seed_numbers():
    tokens = torch.zeros(1, 3, 10, dtype=torch.bool)
    tokens[0, :, :5] = True
    alpha = compute_boundary_blend_mask(tokens, falloff=3, sharpness=10.0)[0, 1]
    assert alpha[4] == pytest.approx(0.5) and alpha[5] == pytest.approx(0.5)
    assert alpha[3] == pytest.approx(torch.sigmoid(torch.tensor(10 / 3)).item())
    assert alpha[6] == pytest.approx(torch.sigmoid(torch.tensor(-10 / 3)).item())
    assert alpha[0] == pytest.approx(torch.sigmoid(torch.tensor(10.0)).item())
    assert alpha[9] == pytest.approx(torch.sigmoid(torch.tensor(-10.0)).item())
    assert torch.equal(compute_boundary_blend_mask(tokens, falloff=0), tokens.float())
    assert torch.equal(compute_boundary_blend_mask(tokens[0]), compute_boundary_blend_mask(tokens)[0])


def test_distance_blend_uses_the_clean_source():
    gen = torch.Generator().manual_seed(2)
    tokens = torch.zeros(2, 4, 6, dtype=torch.bool)
    tokens[:, 1:3, 1:4] = True
    alpha = compute_boundary_blend_mask(tokens)
    x, source = torch.randn(1, 5, 2, 4, 6, generator=gen), torch.randn(1, 5, 2, 4, 6, generator=gen)
    out = blend_clean_step(x, source, alpha)
    assert torch.allclose(out, alpha * x + (1 - alpha) * source, atol=1e-6)
    blender = BoundaryBlender(torch.zeros(9, 128, 192), BlendSettings(mode="distance"))
    noise = torch.randn(1, 5, 2, 4, 6, generator=gen)
    assert torch.equal(blender.step(x, source, noise, 0.9, 9, 10), blend_clean_step(x, source, blender.soft))


def test_schedule_hard_then_cosine_ramp_to_soft():
    sched = BlendSchedule(hard_fraction=0.5)
    weights = [sched.weight(i, 10) for i in range(10)]
    assert weights[:5] == [0.0] * 5
    assert all(b > a for a, b in zip(weights[4:], weights[5:]))
    assert weights[-1] == 1.0
    assert weights[5] == pytest.approx(0.5 * (1 - math.cos(math.pi / 5)))
    assert BlendSchedule(hard_fraction=0.0).weight(0, 4) > 0
    assert [BlendSchedule(hard_fraction=1.0).weight(i, 4) for i in range(4)] == [0.0] * 4
    short = BlendSchedule(hard_fraction=0.5, ramp_fraction=0.2)
    assert [short.weight(i, 10) for i in range(4, 10)] == [0.0, pytest.approx(0.5), 1.0, 1.0, 1.0, 1.0]
    linear = BlendSchedule(hard_fraction=0.0, shape="linear")
    assert [linear.weight(i, 4) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert BlendSchedule().weight(0, 1) == 1.0
    for bad in (dict(hard_fraction=1.5), dict(ramp_fraction=0.0), dict(shape="cubic")):
        with pytest.raises(ValueError):
            BlendSchedule(**bad)
    with pytest.raises(ValueError):
        sched.weight(10, 10)


def test_scheduled_alpha_is_exactly_hard_then_exactly_soft():
    mask = torch.zeros(1, 64, 128)
    mask[0, 10:30, 20:60] = 1.0
    hard, soft = renoise_alpha(mask, 0), renoise_alpha(mask, 64)
    sched = BlendSchedule(hard_fraction=0.5)
    assert torch.equal(scheduled_alpha(hard, soft, 0, 8, sched), hard)
    assert torch.equal(scheduled_alpha(hard, soft, 7, 8, sched), soft)
    mid = scheduled_alpha(hard, soft, 5, 8, sched)
    assert bool(((mid >= hard) & (mid <= soft)).all()) and not torch.equal(mid, hard) and not torch.equal(mid, soft)
    assert torch.equal(mid[soft == 0], torch.zeros(int((soft == 0).sum())))


def test_composite_is_bitwise_source_beyond_the_feather():
    gen = torch.Generator().manual_seed(4)
    edited, source = torch.rand(3, 64, 80, 3, generator=gen), torch.rand(3, 64, 80, 3, generator=gen)
    mask = torch.zeros(3, 64, 80)
    mask[:, 20:40, 25:45] = 1.0
    mask[2] = 0.0
    mask[2, 0:10, 0:10] = 1.0
    out = composite(edited, source, mask, 12)
    alpha = feather_mask(mask, 12)
    beyond = (alpha == 0)[..., None].expand_as(source)
    inside = (mask >= 0.5)[..., None].expand_as(source)
    assert torch.equal(out[beyond].view(torch.int32), source[beyond].view(torch.int32))
    assert torch.equal(out[inside], edited[inside])
    seam = ((alpha > 0) & (alpha < 1))[..., None].expand_as(source)
    assert seam.any() and not torch.equal(out[seam], source[seam])
    static = composite(edited, source, mask[:1], 12)
    assert torch.equal(static, composite(edited, source, mask[:1].expand(3, -1, -1), 12))
    assert torch.equal(composite(edited, source, torch.zeros(1, 64, 80), 12), source)
    assert torch.equal(composite(edited, source, torch.ones(3, 64, 80), 12), edited)
    half = composite(edited.half(), source.double(), mask, 12)
    assert half.dtype == torch.float64 and torch.equal(half[beyond], source[beyond])


def test_pixel_mode_blends_with_the_hard_mask_and_settings_validate():
    mask = torch.zeros(9, 64, 96)
    mask[:, 10:40, 10:50] = 1.0
    blender = BoundaryBlender(mask, BlendSettings(mode="pixel", feather_px=8))
    assert torch.equal(blender.soft, blender.hard) and blender.required_dilation == 0
    for step in range(6):
        assert torch.equal(blender.alpha(step, 6), pixel_mask_to_token_mask(mask).float())
    for bad in (dict(mode="soft"), dict(falloff_px=-1), dict(hard_fraction=2.0)):
        with pytest.raises(ValueError):
            BlendSettings(**bad)
