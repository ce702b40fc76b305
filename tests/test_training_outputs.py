"""What a run writes and how it scales: diffusers loads the LoRA, TensorBoard/debug PNGs, checkpointing, bf16, 8-bit."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, LTX2Pipeline
from peft.tuners.lora import LoraLayer
from PIL import Image
from training_support import tiny_config

from editctrl_core.loading.lora import apply_loras, read_lora
from editctrl_core.loading.models import build_transformer, load_preset
from training.config import ConfigError
from training.train import Trainer


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("outputs_data")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A short scd run with TensorBoard and a debug image every 2 steps."""
    root = tmp_path_factory.mktemp("outputs_run")
    cfg = tiny_config(root, ["output.tensorboard=true", "output.debug_image_every=2"], steps=(4,), data_dir=data_dir)
    result = Trainer(cfg, resume="none", quiet=True).run()
    assert result.steps == 4
    return Path(cfg.output.dir)


def test_diffusers_pipeline_loads_the_trained_lora(trained: Path) -> None:
    path = trained / "lora_weights.safetensors"
    lora = read_lora(path)
    assert lora.metadata["base_model"] == "editctrl/tiny" and lora.source_format == "native"
    assert any(float(w.B.abs().max()) > 0 for w in lora.layers.values()), "training left the LoRA at zero"
    base = build_transformer(load_preset("tiny"))
    pipe = LTX2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, audio_vae=None, text_encoder=None,
                        tokenizer=None, connectors=None, transformer=copy.deepcopy(base), vocoder=None)
    pipe.load_lora_weights(str(path), adapter_name="trained")
    injected = sorted(n for n, m in pipe.transformer.named_modules() if isinstance(m, LoraLayer))
    assert injected == sorted(lora.layers)
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, 5, 32, generator=g)
    inputs = dict(hidden_states=torch.randn(1, 12, 16, generator=g), audio_hidden_states=torch.randn(1, 1, 8, generator=g),
                  encoder_hidden_states=text, audio_encoder_hidden_states=text, timestep=torch.tensor([600.0]),
                  sigma=torch.tensor([0.6]), num_frames=2, height=2, width=3, audio_num_frames=1,
                  isolate_modalities=True, return_dict=False)
    with torch.no_grad():
        plain = base(**inputs)[0]
        with apply_loras(base, [(lora, 1.0)]):
            ours = base(**inputs)[0]
        theirs = pipe.transformer(**inputs)[0]
    assert not torch.allclose(plain, ours)
    # one forward pass, no optimiser step: the two LoRA implementations differ at most in where the alpha/rank scale
    # is applied (before or after the second factor), a few float32 roundings (u = 6e-8) of LoRA terms <= 0.2 in each
    # of the 48 patched projections; summed without any cancelling that is ~1e-7 at outputs |y| <= 2, far inside 1e-5
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_tensorboard_and_debug_images(trained: Path) -> None:
    events = list((trained / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trained / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/scd")] == [1, 2, 3, 4]
    assert "debug" in acc.Tags()["images"]
    pngs = sorted((trained / "debug").glob("step_*.png"))
    assert [p.name for p in pngs] == ["step_00002.png", "step_00004.png"]
    image = torch.from_numpy(__import__("numpy").array(Image.open(pngs[0]).convert("RGB"))).float() / 255
    assert image.shape == (3 * 64, 5 * 96, 3)
    overlay, source = image[:, 4 * 96:], image[:, :96]
    red = (overlay[..., 0] - source[..., 0] > 0.2) & (overlay[..., 1] < source[..., 1])
    assert red.any(), "the mask overlay column shows no red"


def _losses(root: Path, data_dir: Path, overrides: list[str]) -> tuple[list[float], Trainer]:
    cfg = tiny_config(root, overrides, steps=(2,), data_dir=data_dir)
    trainer = Trainer(cfg, resume="none", quiet=True)
    return trainer.run().losses, trainer


def test_gradient_checkpointing_gives_the_same_losses(tmp_path: Path, data_dir: Path) -> None:
    plain, _ = _losses(tmp_path / "a", data_dir, [])
    ckpt, trainer = _losses(tmp_path / "b", data_dir, ["model.gradient_checkpointing=true"])
    assert trainer.module.transformer.gradient_checkpointing is True
    # checkpointing recomputes each block's forward with the same float32 ops, so the first loss (before any step)
    # is the same float
    assert ckpt[0] == plain[0]
    # and so are the gradients today (both losses are equal bit for bit). Should torch ever sum the recomputed
    # blocks' gradient contributions in another order, AdamW's step could flip only in elements whose gradient g_i is
    # rounding-sized (δ_i), and to first order the next loss moves by lr·Σ|g_i·Δstep_i| <= 2·lr·Σδ_i, about 1e-9 for
    # these 6144 LoRA numbers: 1e-6 stays far above that
    torch.testing.assert_close(torch.tensor(ckpt), torch.tensor(plain), atol=1e-6, rtol=1e-6)


def test_bf16_run_keeps_trainable_parameters_fp32(tmp_path: Path, data_dir: Path) -> None:
    losses, trainer = _losses(tmp_path, data_dir, ["model.dtype=bfloat16", "train.mixed_precision=bf16"])
    assert all(torch.isfinite(torch.tensor(losses)))
    params = dict(trainer.module.transformer.named_parameters())
    assert params["proj_in.weight"].dtype == torch.bfloat16
    lora = [p for n, p in params.items() if ".lora_" in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)


def test_8bit_optimizer(tmp_path: Path, data_dir: Path) -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="train.optimizer: adamw8bit needs bitsandbytes"):
            _losses(tmp_path, data_dir, ["train.optimizer=adamw8bit"])
        return
    losses, trainer = _losses(tmp_path, data_dir, ["train.optimizer=adamw8bit"])
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert (Path(trainer.cfg.output.dir) / "state_step_00002" / "optimizer.safetensors").is_file()


def test_wandb_is_optional(tmp_path: Path, data_dir: Path, caplog: pytest.LogCaptureFixture,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    try:
        import wandb  # noqa: F401
        installed = True
    except ImportError:
        installed = False
    with caplog.at_level("WARNING", logger="editctrl.training"):
        losses, trainer = _losses(tmp_path, data_dir, ["output.wandb=true"])
    assert len(losses) == 2
    if installed:
        assert (Path(trainer.cfg.output.dir) / "wandb").is_dir()
    else:
        assert "wandb is not installed" in caplog.text
