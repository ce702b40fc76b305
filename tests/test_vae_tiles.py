"""Local VAE decode: the exact halo gives the full decode's pixels inside the mask; the composite keeps the source."""

import pytest
import torch

from editctrl_core.loading.models import build_vae, load_preset
from editctrl_core.media.vae import decode_latents
from editctrl_core.media.vae_tiles import (
    LatentBox,
    composite_local,
    edit_box,
    exact_halo_tokens,
    local_decode,
    receptive_radius_px,
)

PRESET = load_preset("tiny")
GRID = (2, 18, 20)


@pytest.fixture(scope="module")
def decoded():
    vae = build_vae(PRESET)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, PRESET.vae["latent_channels"], *GRID, generator=gen)
    mask = torch.zeros(GRID, dtype=torch.bool)
    mask[:, 8:10, 9:11] = True
    return vae, latents, mask, decode_latents(vae, latents)


def test_receptive_radius_matches_the_tiny_decoder_layout():
    vae = build_vae(PRESET, empty=True)
    # conv_in, the mid resnet's 2 convs and the first upsampler conv run on the latent grid (32 px per step); then
    # 2 resnet convs + the next upsampler conv at 2× (16 px), the same at 4× (8 px), 2 resnet convs + conv_out at 8×
    # (4 px; the patch-4 unpatchify adds no reach): 4·32 + 3·16 + 3·8 + 3·4
    assert receptive_radius_px(vae) == pytest.approx(4 * 32 + 3 * 16 + 3 * 8 + 3 * 4)
    assert exact_halo_tokens(vae) == 7


def test_local_decode_with_exact_halo_equals_full_decode_inside_the_mask(decoded):
    vae, latents, mask, full = decoded
    halo = exact_halo_tokens(vae)
    frames, crop = local_decode(vae, latents, mask, halo)
    assert crop == LatentBox(1, 17, 2, 18)  # interior on every side: the crop edges are real cuts
    y0, y1, x0, x1 = crop.pixels()
    assert frames.shape == (full.shape[0], y1 - y0, x1 - x0, 3)
    box = edit_box(mask)
    inner = (slice(box.y0 * 32 - y0, box.y1 * 32 - y0), slice(box.x0 * 32 - x0, box.x1 * 32 - x0))
    ref = full[:, y0:y1, x0:x1][:, inner[0], inner[1]]
    torch.testing.assert_close(frames[:, inner[0], inner[1]], ref, atol=1e-5, rtol=0)
    short, _ = local_decode(vae, latents, mask, 2)
    margin = 32 * 2
    near = short[:, margin:margin + 64, margin:margin + 64]
    far = full[:, box.y0 * 32:box.y1 * 32, box.x0 * 32:box.x1 * 32]
    assert (near - far).abs().max() > 1e-3  # a too-small halo is visibly wrong: the test can fail


def test_composite_local_keeps_source_outside_and_refuses_an_uncovered_feather(decoded):
    vae, latents, mask, full = decoded
    frames, crop = local_decode(vae, latents, mask, 1)
    source = torch.rand(full.shape, generator=torch.Generator().manual_seed(1))
    pixel_mask = torch.zeros(full.shape[:3])
    pixel_mask[:, 8 * 32:10 * 32, 9 * 32:11 * 32] = 1.0
    out = composite_local(source, frames, crop, pixel_mask, feather_px=16)
    y0, y1, x0, x1 = crop.pixels()
    outside = torch.ones(full.shape[:3], dtype=torch.bool)
    outside[:, 8 * 32 - 16:10 * 32 + 16, 9 * 32 - 16:11 * 32 + 16] = False
    assert torch.equal(out[outside], source[outside])
    inside = (slice(None), slice(8 * 32, 10 * 32), slice(9 * 32, 11 * 32))
    torch.testing.assert_close(out[inside], frames[:, 8 * 32 - y0:10 * 32 - y0, 9 * 32 - x0:11 * 32 - x0])
    with pytest.raises(ValueError, match="halo"):
        composite_local(source, frames, crop, pixel_mask, feather_px=40)
