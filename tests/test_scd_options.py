"""Editing is not next-frame prediction: by default each frame's edit tokens see their own frame's background
encoding; the SCD paper's shift and the encoder attention are recorded options that trained files carry and the
loader follows (files from before they were recorded get what they were trained with)."""

from __future__ import annotations

import pytest
import torch

from editctrl_core.conditioning.text_encoders import build_tiny_text_encoder
from editctrl_core.edit.context import to_tokens
from editctrl_core.edit.scd import SCDModel, SCDOptions
from editctrl_core.editmodel import EditModel
from editctrl_core.loading.lora import LoraFile
from editctrl_core.loading.models import build_transformer, load_preset
from editctrl_core.loading.scd_metadata import options_from_metadata, options_metadata

PRESET = load_preset("tiny")
GRID = (3, 2, 3)
PER_FRAME = GRID[1] * GRID[2]


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    model = build_transformer(PRESET)
    text = build_tiny_text_encoder().encode(["a calm lake"])
    gen = torch.Generator().manual_seed(1)
    background = torch.randn(1, PRESET.transformer["in_channels"], *GRID, generator=gen)
    return model, text, background


def _velocity(scd: SCDModel, text, background: torch.Tensor) -> torch.Tensor:
    n = GRID[0] * PER_FRAME
    context = scd.encode(to_tokens(background), GRID, text)
    index = torch.arange(n)
    plan = scd.plan(index, context, GRID, text)
    x = torch.randn(1, n, PRESET.transformer["in_channels"], generator=torch.Generator().manual_seed(2))
    return scd.decode(plan, x, torch.tensor([0.5])), context


def test_by_default_the_last_frame_sees_its_own_background_and_frame_0_a_real_prefix(parts):
    model, text, background = parts
    scd = SCDModel(model, SCDOptions(split_layer=PRESET.split_layer))
    assert scd.options.shift is False and scd.options.causal is True
    with torch.no_grad():
        base, context = _velocity(scd, text, background)
        moved = background.clone()
        moved[:, :, -1] += 1.0
        changed, _ = _velocity(scd, text, moved)
    assert context[:, :PER_FRAME].abs().max() > 0, "frame 0's prefix must be its own encoding, not zeros"
    last = slice((GRID[0] - 1) * PER_FRAME, None)
    assert not torch.allclose(changed[:, last], base[:, last], atol=1e-5)
    shifted = SCDModel(model, SCDOptions(split_layer=PRESET.split_layer, shift=True))
    with torch.no_grad():
        s_base, s_context = _velocity(shifted, text, background)
        s_moved, _ = _velocity(shifted, text, moved)
    assert torch.equal(s_context[:, :PER_FRAME], torch.zeros_like(s_context[:, :PER_FRAME]))
    assert torch.equal(s_moved, s_base), "with the next-frame shift the last frame's background is never used"


def test_bidirectional_encoder_lets_every_frame_see_the_last(parts):
    model, text, background = parts
    scd = SCDModel(model, SCDOptions(split_layer=PRESET.split_layer, causal=False))
    moved = background.clone()
    moved[:, :, -1] += 1.0
    with torch.no_grad():
        base, _ = _velocity(scd, text, background)
        changed, _ = _velocity(scd, text, moved)
    assert not torch.allclose(changed[:, :PER_FRAME], base[:, :PER_FRAME], atol=1e-5)


def test_metadata_records_the_options_and_the_loader_follows_them(parts):
    model, _, _ = parts
    options = SCDOptions(split_layer=PRESET.split_layer, shift=True, causal=False, prefix="bidirectional")
    meta = options_metadata(options)
    assert meta == {"scd_prefix": "bidirectional", "scd_shift": "true", "scd_encoder": "bidirectional"}
    assert options_from_metadata(meta) == {"prefix": "bidirectional", "shift": True, "causal": False}
    assert options_from_metadata({"scd_prefix": "one_way", "split_layer": "4"}) == {
        "shift": True, "causal": True, "prefix": "one_way"}, "files from before the keys existed: as trained"
    assert options_from_metadata({"editctrl.rank": "4"}) == {}, "an ordinary LoRA changes nothing"
    with pytest.raises(ValueError, match="scd_shift must be 'true' or 'false'"):
        options_from_metadata({"scd_shift": "maybe"})
    with pytest.raises(ValueError, match="unknown SCD encoder attention 'sideways'"):
        options_from_metadata({"scd_encoder": "sideways"})
    edit = EditModel(SCDModel(model, SCDOptions(split_layer=PRESET.split_layer)), PRESET, "memory")
    followed = edit.with_lora(LoraFile({}, meta), 1.0)
    assert (followed.scd.options.shift, followed.scd.options.causal, followed.scd.options.prefix) == (
        True, False, "bidirectional")
    assert edit.scd.options.shift is False, "the shared model is left as it was"


def test_adapter_files_record_the_options_and_old_files_read_as_trained(tmp_path):
    from editctrl_core.edit.adapters import LocalContextConfig, LocalContextModule, read_adapter_metadata, save_adapter

    inner = PRESET.transformer["num_attention_heads"] * PRESET.transformer["attention_head_dim"]
    module = LocalContextModule(LocalContextConfig(in_channels=PRESET.transformer["in_channels"] + 1, width=16,
                                                   num_blocks=1, heads=2, head_dim=8, text_dim=inner,
                                                   model_dim=inner, target_blocks=(0,)))
    new = tmp_path / "new.safetensors"
    save_adapter(module, new, PRESET.model_id, PRESET.split_layer,
                 options_metadata(SCDOptions(split_layer=PRESET.split_layer)))
    assert read_adapter_metadata(new).scd_options == {"shift": False, "causal": True, "prefix": "one_way"}
    old = tmp_path / "old.safetensors"
    save_adapter(module, old, PRESET.model_id, PRESET.split_layer)
    assert read_adapter_metadata(old).scd_options == {"shift": True, "causal": True}
