"""Each training stage trains only its own parameters; the loss covers only the decoded edit tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from training_support import tiny_config

from editctrl_core.edit.masks import dilate_token_mask
from training.train import Trainer

STAGES = {
    "scd": (("scd",), (1,)),
    "editctrl_local": (("scd", "editctrl_local"), (0, 1)),
    "editctrl_global": (("scd", "editctrl_local", "editctrl_global"), (0, 0, 1)),
    "tma": (("tma",), (1,)),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic clips + cache shared by the tests of this module, and cached 'Qwen' features for them."""
    root = tmp_path_factory.mktemp("stages_data")
    qwen = root / "qwen"
    qwen.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        save_file({"hidden_states": torch.randn(12, 32, generator=g), "attention_mask": torch.ones(12, dtype=torch.bool)},
                  str(qwen / f"synthetic_{i:05d}.safetensors"))
    return root


def _trainer(tmp_path: Path, data_dir: Path, stage: str) -> Trainer:
    names, steps = STAGES[stage]
    over = [f"data.qwen_feature_dir={data_dir / 'qwen'}"] if stage == "tma" else []
    cfg = tiny_config(tmp_path, over, names=names, steps=steps, data_dir=data_dir)
    return Trainer(cfg, resume="none", quiet=True)


@pytest.mark.parametrize("stage", list(STAGES))
def test_only_the_stage_parameters_change(tmp_path: Path, data_dir: Path, stage: str) -> None:
    trainer = _trainer(tmp_path, data_dir, stage)
    m = trainer.module
    qwen_dim = 32 if stage == "tma" else None
    last = len(STAGES[stage][0]) - 1
    m.prepare_stage(last, qwen_dim)
    trainable = set(m.trainable_names())
    expected_prefix = {"scd": "transformer.", "editctrl_local": "local.", "editctrl_global": "global_context.",
                       "tma": "tma."}[stage]
    assert trainable and all(n.startswith(expected_prefix) for n in trainable), sorted(trainable)[:5]
    if stage == "scd":
        assert all(".lora_" in n for n in trainable)
    before = {k: v.detach().clone() for k, v in m.state_dict().items()}
    assert len(before) > len(trainable)
    result = trainer.run(max_steps=1)
    assert result.steps == 1 and len(result.losses) == 1 and torch.isfinite(torch.tensor(result.losses[0]))
    after = m.state_dict()
    assert set(after) == set(before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    frozen_changed = changed - trainable
    assert not frozen_changed, f"frozen tensors changed: {sorted(frozen_changed)[:5]}"
    assert changed, "no trainable tensor moved"


def test_loss_covers_only_selected_non_context_tokens(tmp_path: Path, data_dir: Path) -> None:
    trainer = _trainer(tmp_path, data_dir, "scd")
    m = trainer.module
    m.prepare_stage(0)
    sample = trainer.dataset[0]
    with torch.no_grad():
        for k in range(6):
            base = m.sample_loss(sample, k, want_debug=True)
            dbg = base.debug
            select, edit, context = dbg["select"], dbg["mask"], dbg["context_frames"]
            assert select.any() and not select[context].any(), "context frames must not be decoded"
            assert torch.equal(select, dilate_token_mask(edit, trainer.cfg.train.dilation) & ~context[:, None, None])
            assert not edit[context].any()
            background, source = dbg["background"][0], dbg["source"][0]
            assert torch.equal(background[:, ~edit], source[:, ~edit])
            assert torch.equal(background[:, edit], sample.fill[:, edit])
            original = sample.target
            try:
                sample.target = original.masked_fill(~select[None], 5.0)
                assert torch.equal(m.sample_loss(sample, k).loss, base.loss)
                sample.target = original.masked_fill(select[None], 5.0)
                assert not torch.equal(m.sample_loss(sample, k).loss, base.loss)
            finally:
                sample.target = original


def test_samples_are_reproducible_per_index(tmp_path: Path, data_dir: Path) -> None:
    trainer = _trainer(tmp_path, data_dir, "scd")
    m = trainer.module
    m.prepare_stage(0)
    sample = trainer.dataset[1]
    with torch.no_grad():
        first = [m.sample_loss(sample, k).loss for k in range(4)]
        again = [m.sample_loss(sample, k).loss for k in reversed(range(4))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert len({float(x) for x in first}) == 4


def test_adapter_stages_build_editctrl_layout_modules(tmp_path: Path, data_dir: Path) -> None:
    """The global stage's embedder starts as a copy of the transformer's patch embedding (mask column zero); the
    local module reads x_t; the files the run writes are the current layout and load back for the sampler."""
    from editctrl_core.edit.adapters import (
        GlobalContextEmbedder,
        LocalContextModule,
        load_adapter,
        read_adapter_metadata,
    )

    trainer = _trainer(tmp_path, data_dir, "editctrl_global")
    m = trainer.module
    m.prepare_stage(2)
    proj_in, embed = m.transformer.proj_in, m.global_context.patch_embed
    c = proj_in.in_features
    assert torch.equal(embed.weight[:, :c], proj_in.weight.float()) and torch.equal(embed.bias, proj_in.bias.float())
    assert float(embed.weight[:, c:].detach().abs().max()) == 0.0
    assert hasattr(m.local, "proj_noisy")
    result = trainer.run(max_steps=1)
    for key, cls in (("local", LocalContextModule), ("global", GlobalContextEmbedder)):
        info = read_adapter_metadata(result.files[key])
        assert info.layout == cls.LAYOUT
        module = load_adapter(result.files[key], info.base_model_id, info.split_layer)
        assert isinstance(module, cls)
        m.scd.attach(**({"local": module} if key == "local" else {"global_context": module}))


def test_global_stage_trains_on_the_inference_global_input(tmp_path: Path, data_dir: Path, monkeypatch) -> None:
    """The global stage's embedder gets `global_input(vae, clip frames, drawn edit mask)` — the low-resolution VAE
    latents of the masked clip, the same core function inference uses — not pooled full-size latents."""
    from editctrl_core.edit.adapters import GlobalContextEmbedder
    from editctrl_core.edit.context import global_input
    from editctrl_core.edit.scd import SCDModel
    from editctrl_core.media.video_io import read_video
    from training.data import ShapeRule, discover_clips

    trainer = _trainer(tmp_path, data_dir, "editctrl_global")
    m = trainer.module
    m.prepare_stage(2)
    seen: dict[str, list] = {"input": [], "mask": []}
    forward, plan = GlobalContextEmbedder.forward, SCDModel.plan
    monkeypatch.setattr(GlobalContextEmbedder, "forward",
                        lambda self, x: seen["input"].append(x.detach().cpu()) or forward(self, x))
    monkeypatch.setattr(SCDModel, "plan",
                        lambda self, *a, **k: seen["mask"].append(k["edit_mask"].cpu()) or plan(self, *a, **k))
    d = trainer.cfg.data
    spec = discover_clips(Path(d.clips))[0]
    frames, _ = ShapeRule(d.frames, d.height, d.width, d.frame_stride).apply(read_video(spec.path)[0])
    sample = trainer.dataset[0]
    assert sample.sample_id == spec.sample_id and sample.global_latents is not None
    with torch.no_grad():
        for k in range(2):
            m.sample_loss(sample, k)
    assert len(seen["input"]) == len(seen["mask"]) == 2
    for x, edit in zip(seen["input"], seen["mask"]):
        expected = global_input(trainer.base.vae, frames, edit)
        assert x.shape == expected.shape and x.shape[2:] == (2, 2, 3)
        torch.testing.assert_close(x, expected, atol=1e-5, rtol=1e-5)
        assert bool(x[0, -1].any())  # the drawn mask reaches the low-resolution mask channel
