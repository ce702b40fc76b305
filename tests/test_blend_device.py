"""Blend masks and the pixel composite on any device: the same functions with ``device=`` give the CPU reference.

Runs on the CPU everywhere and also on CUDA when a GPU is present. What must be identical bit for bit on every
device: pixel distances (integer transform + one correctly rounded sqrt), the hard token mask, every α that is
exactly 0 or 1 by rule (so the composite is the source bitwise beyond the feather and the edit bitwise inside), and
the composite's output beyond the feather. Inside the ramp, ``cos``, ``avg_pool2d`` and ``lerp`` are library
kernels whose rounding may differ across devices; those values are held to the bounds below (no timing is asserted).
"""

import math

import pytest
import torch

from editctrl_core.edit.blend import (
    BLEND_MODES,
    BlendSettings,
    BoundaryBlender,
    composite,
    feather_mask,
    pixel_distance,
    renoise_alpha,
)
from editctrl_core.edit.masks import token_mask_to_pixel_mask

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
EPS32 = 2.0 ** -23  # float32 ulp of 1
# α = 0.5·(1 + cos(π·t)) with t the same bits everywhere: float32 cos is within 2 ulp on CUDA and 1 ulp on the CPU,
# so |Δcos| <= 3 ulp(1) and |Δα| <= 1.5 ulp(1) plus one rounding of the sum and of the halving.
RAMP_BOUND = 4 * EPS32
# a token's soft α is the mean of spatial² = 1024 ramp values in [0, 1]: any two summation orders differ by at most
# 2·(n-1)·u·(sum) with u = 2^-24, i.e. <= 1023·2^-23 of the mean, on top of each value's RAMP_BOUND.
POOL_BOUND = 1023 * EPS32 + RAMP_BOUND
# composite = lerp(src, edt, α) in [0, 1] images: |Δα|·|edt - src| <= RAMP_BOUND, plus one rounding (with or without
# a fused multiply-add) of the result on each side.
MIX_BOUND = RAMP_BOUND + 2 * EPS32


def _frames(seed: int, frames: int = 5, height: int = 64, width: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """Edited and source frames [F,H,W,3] in 0..1."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(frames, height, width, 3, generator=gen),
            torch.rand(frames, height, width, 3, generator=gen))


def _moving_mask(frames: int = 5, height: int = 64, width: int = 96) -> torch.Tensor:
    """A float mask whose box moves and changes shape per frame (frames 1 and 2 equal), with a soft value."""
    mask = torch.zeros(frames, height, width)
    for f in range(frames):
        x = 20 + 6 * max(f - 1, 0)
        mask[f, 18:40, x:x + 25] = 1.0
    mask[3, 2:6, 80:90] = 0.6
    mask[4] = 0.0
    mask[4, 50:51, 3:4] = 1.0
    return mask


def _bits(t: torch.Tensor) -> torch.Tensor:
    """float32 tensor as its raw bits (so equality is bitwise, sign of zero included)."""
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("feather", [0.0, 5.0, 12.0, 16.5])
def test_composite_on_a_device_is_the_cpu_composite(device, feather):
    edited, source = _frames(1)
    mask = _moving_mask()
    ref = composite(edited, source, mask, feather, device="cpu")
    out = composite(edited, source, mask, feather, device=device)
    assert out.device == source.device and out.dtype == source.dtype and out.shape == source.shape
    alpha = feather_mask(mask, feather)
    beyond = (alpha == 0)[..., None].expand_as(source)
    inside = (alpha == 1)[..., None].expand_as(source)
    assert torch.equal(_bits(out[beyond]), _bits(source[beyond]))
    assert torch.equal(_bits(out[inside]), _bits(edited[inside]))
    assert (out - ref).abs().max().item() <= MIX_BOUND
    if device == "cpu":
        assert torch.equal(out, ref)


@pytest.mark.parametrize("device", DEVICES)
def test_composite_keeps_inputs_and_handles_static_empty_and_full_masks(device):
    edited, source = _frames(2)
    kept = (edited.clone(), source.clone())
    mask = _moving_mask()
    static = composite(edited, source, mask[:1], 12, device=device)
    assert torch.equal(static, composite(edited, source, mask[:1].expand(5, -1, -1), 12, device=device))
    empty = composite(edited, source, torch.zeros(1, 64, 96), 12, device=device)
    assert torch.equal(empty, source) and empty.data_ptr() != source.data_ptr()
    assert torch.equal(composite(edited, source, torch.ones(5, 64, 96), 12, device=device), edited)
    double = composite(edited.half(), source.double(), mask, 12, device=device)
    beyond = (feather_mask(mask, 12) == 0)[..., None].expand_as(source)
    assert double.dtype == torch.float64 and double.device == source.device
    assert torch.equal(double[beyond], source.double()[beyond])
    assert torch.equal(edited, kept[0]) and torch.equal(source, kept[1])


@pytest.mark.parametrize("device", DEVICES)
def test_composite_defaults_to_the_decoded_frames_device(device):
    edited, source = _frames(3)
    mask = _moving_mask()
    out = composite(edited.to(device), source, mask, 12)
    assert out.device == source.device
    assert (out - composite(edited, source, mask, 12)).abs().max().item() <= MIX_BOUND


@pytest.mark.parametrize("device", DEVICES)
def test_composite_refuses_non_finite_frames_on_the_device(device):
    edited, source = _frames(4)
    edited[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="edited frames"):
        composite(edited, source, _moving_mask(), 8, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("limit", [None, 0.0, 3.0, 16.0, 64.0])
def test_pixel_distance_is_bitwise_the_same_on_every_device(device, limit):
    mask = _moving_mask()
    near_full = torch.ones(3, 40, 50)
    near_full[:, 0, 0] = 0.0  # small column distances everywhere: the transform stops after a few columns
    for m in (mask, near_full, torch.zeros(2, 8, 8)):
        ref = pixel_distance(m, limit)
        got = pixel_distance(m, limit, device=device)
        assert got.device.type == torch.device(device).type
        assert torch.equal(got.cpu(), ref)


@pytest.mark.parametrize("device", DEVICES)
def test_pixel_distance_stops_early_only_where_it_cannot_change_a_distance(device):
    holes = torch.ones(1, 30, 200)
    holes[0, 0, 0] = holes[0, 29, 199] = 0.0  # every column distance <= 1: the search ends after one column
    stripes = torch.zeros(2, 40, 120)
    stripes[:, :, ::13] = 1.0  # empty columns at most 6 from a full one: the bound drops at the checkpoint
    stripes[1, 5, 7] = 1.0
    for mask in (holes, stripes):
        got = pixel_distance(mask, 64.0, device=device).cpu()
        ys, xs = torch.meshgrid(torch.arange(mask.shape[1]), torch.arange(mask.shape[2]), indexing="ij")
        pts = torch.stack([ys.flatten(), xs.flatten()], dim=1).double()
        for f in range(mask.shape[0]):
            hits = pts[mask[f].flatten() > 0]
            ref = torch.cdist(pts, hits, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
            ref = ref.reshape(mask.shape[1:])  # float64 sqrt of integers, then one rounding: the float32 sqrt
            assert torch.equal(got[f], ref.float())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("falloff", [0.0, 16.0, 64.0])
def test_renoise_alpha_on_a_device_is_the_cpu_alpha(device, falloff):
    token = torch.zeros(3, 4, 6, dtype=torch.bool)
    token[:, 1:3, 2:4] = True
    token[2, 0, 0] = True
    mask = token_mask_to_pixel_mask(token, 9)
    ref = renoise_alpha(mask, falloff)
    got = renoise_alpha(mask, falloff, device=device).cpu()
    exact = (ref == 0) | (ref == 1)
    assert torch.equal(got[exact], ref[exact])
    assert (got - ref).abs().max().item() <= POOL_BOUND


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", BLEND_MODES)
def test_blender_keeps_its_masks_on_the_device_and_blends_the_same(device, mode):
    mask = torch.zeros(9, 96, 128)
    mask[:, 30:60, 40:90] = 1.0
    ref = BoundaryBlender(mask, BlendSettings(mode=mode))
    got = BoundaryBlender(mask, BlendSettings(mode=mode), device=device)
    assert got.hard.device.type == got.soft.device.type == torch.device(device).type
    assert torch.equal(got.hard.cpu(), ref.hard)
    exact = (ref.soft == 0) | (ref.soft == 1)
    assert torch.equal(got.soft.cpu()[exact], ref.soft[exact])
    assert (got.soft.cpu() - ref.soft).abs().max().item() <= POOL_BOUND
    idx = torch.arange(ref.hard.numel())[::3]  # covered, ramp and α = 0 tokens, gathered token-major
    gen = torch.Generator().manual_seed(5)
    x, src, noise = (torch.rand(1, idx.numel(), 8, generator=gen) for _ in range(3))
    for step in range(4):
        zero = (ref.alpha(step, 4, idx) == 0).view(1, -1, 1).expand_as(x)
        want = ref.step(x, src, noise, 0.5, step, 4, idx)
        have = got.step(x.to(device), src.to(device), noise.to(device), 0.5, step, 4, idx).cpu()
        assert torch.equal(_bits(have[zero]), _bits(want[zero]))  # the re-noised source, bitwise
        assert (have - want).abs().max().item() <= POOL_BOUND + 2 * EPS32  # |x - target| <= 1 for values in 0..1


@pytest.mark.parametrize("device", DEVICES)
def test_an_expanded_static_mask_gives_the_materialised_masks_results(device):
    edited, source = _frames(6)
    plane = _moving_mask()[:1]
    expanded, dense = plane.expand(5, -1, -1), plane.repeat(5, 1, 1)
    assert torch.equal(composite(edited, source, expanded, 12, device=device),
                       composite(edited, source, dense, 12, device=device))
    assert torch.equal(pixel_distance(expanded, 16, device=device), pixel_distance(dense, 16, device=device))
    token = torch.zeros(1, 2, 3, dtype=torch.bool)
    token[0, 1, 1] = True
    pixel = token_mask_to_pixel_mask(token, 1).expand(9, -1, -1)
    assert torch.equal(renoise_alpha(pixel, 40, device=device), renoise_alpha(pixel.contiguous(), 40, device=device))
