"""Training configs: validated on load with errors naming the bad field; the CLI's --dry-run plan."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from training_support import REPO, tiny_config, tiny_config_dict

from training.config import ConfigError, config_from_dict, config_hash, load_config
from training.train import main

CONFIGS = REPO / "training" / "configs"


@pytest.mark.parametrize("name", ["scd_finetune.yaml", "editctrl_scd_tma.yaml", "tiny_synthetic.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert cfg.stages and config_hash(cfg) == config_hash(load_config(CONFIGS / name))


@pytest.mark.parametrize("change, field", [
    (lambda d: d["stages"][0]["lora"].update(rank=0), "stages[0].lora.rank"),
    (lambda d: d["stages"][0]["lora"].update(targets=["to_q", "ff"]), "stages[0].lora.targets[1]"),
    (lambda d: d["data"].update(frames=16), "data.frames"),
    (lambda d: d["data"].update(height=100), "data.height"),
    (lambda d: d["train"].update(batch_size="two"), "train.batch_size"),
    (lambda d: d["train"].update(optimizer="sgd"), "train.optimizer"),
    (lambda d: d["train"].update(learning_rate=1e-4), "train.learning_rate"),
    (lambda d: d["stages"][0].update(name="dreambooth"), "stages[0].name"),
    (lambda d: d["masks"].update(mode="boxes"), "masks.mode"),
    (lambda d: d["model"].update(preset="ltx-9"), "model.preset"),
    (lambda d: d["output"].update(checkpoint_every=0), "output.checkpoint_every"),
    (lambda d: d.update(stages=[{"name": "tma", "steps": 1, "lr": 1e-4}]), "data.qwen_feature_dir"),
])
def test_bad_field_is_named(tmp_path: Path, change, field: str) -> None:
    data = tiny_config_dict(tmp_path)
    change(data)
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert str(err.value).startswith(field + ":"), str(err.value)


@pytest.mark.parametrize("override, field", [
    ("stages[0].lr=.inf", "stages[0].lr"),
    ("stages[0].lr='-inf'", "stages[0].lr"),
    ("stages[0].decoder_lr_mult=.nan", "stages[0].decoder_lr_mult"),
    ("train.weight_decay=.inf", "train.weight_decay"),
    ("train.betas=[0.9, .nan]", "train.betas[1]"),
    ("train.max_grad_norm=.inf", "train.max_grad_norm"),
    ("train.encoder_noise=.nan", "train.encoder_noise"),
    ("train.caption_dropout=nan", "train.caption_dropout"),
    ("train.context_frame_ratio=.nan", "train.context_frame_ratio"),
    ("train.timestep_shift=.inf", "train.timestep_shift"),
    ("masks.min_area=.nan", "masks.min_area"),
    ("masks.semantic_mask_ratio=.inf", "masks.semantic_mask_ratio"),
    ("stages[0].lora.alpha=.inf", "stages[0].lora.alpha"),
    ("stages[0].lora.dropout=.nan", "stages[0].lora.dropout"),
    ("train.weight_decay=" + "9" * 400, "train.weight_decay"),
])
def test_non_finite_numbers_are_refused(tmp_path: Path, override: str, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        tiny_config(tmp_path, [override])
    assert str(err.value).startswith(f"{field}: must be a finite number, got "), str(err.value)


@pytest.mark.parametrize("overrides, field, message", [
    (["stages[0].lr=0"], "stages[0].lr", "must be in (0, 1)"),
    (["stages[0].lr=1.5"], "stages[0].lr", "must be in (0, 1)"),
    (["stages[0].lr=0.6", "stages[0].decoder_lr_mult=2"], "stages[0].decoder_lr_mult", "must stay below 1"),
    (["stages[0].decoder_lr_mult=0"], "stages[0].decoder_lr_mult", "must be > 0"),
    (["train.weight_decay=-0.1"], "train.weight_decay", "must be >= 0"),
    (["train.weight_decay=100"], "train.weight_decay",
     "stages[0]'s peak lr 0.02 (lr x decoder_lr_mult) x weight_decay = 2 must stay below 1"),
    (["train.betas=[0.9, 1.0]"], "train.betas", "must be two numbers in [0, 1)"),
    (["train.betas=[0.9]"], "train.betas", "must be two numbers in [0, 1)"),
    (["train.max_grad_norm=-1"], "train.max_grad_norm", "must be >= 0"),
    (["train.warmup_steps=-1"], "train.warmup_steps", "must be >= 0"),
    (["train.encoder_noise=-0.1"], "train.encoder_noise", "must be >= 0"),
    (["train.context_frame_ratio=1.0"], "train.context_frame_ratio", "must be in [0, 1)"),
    (["train.caption_dropout=1.5"], "train.caption_dropout", "must be in [0, 1]"),
    (["masks.object_min_area=0.9"], "masks.object_min_area", "need 0 <= object_min_area <= object_max_area <= 1"),
    (["stages[0].lora=null"], "stages[0].lora", "stage scd trains a LoRA but no stage up to it configures one"),
])
def test_out_of_range_settings_name_the_field(tmp_path: Path, overrides: list[str], field: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        tiny_config(tmp_path, overrides)
    assert str(err.value).startswith(f"{field}: ") and message in str(err.value), str(err.value)


def test_tma_stage_fields_are_checked(tmp_path: Path) -> None:
    base = ["data.qwen_feature_dir=" + str(tmp_path), "stages[1].name=tma", "stages[1].steps=1",
            "stages[1].lr=1e-4", "stages[1].tma={num_tasks: 2, num_queries: 4, num_heads: 4, mlp_dim: 16}"]
    assert tiny_config(tmp_path, base).stages[1].name == "tma"
    with pytest.raises(ConfigError, match=r"^stages\[1\]\.tma\.dropout: must be in \[0, 1\)"):
        tiny_config(tmp_path, [*base, "stages[1].tma.dropout=1.0"])
    with pytest.raises(ConfigError, match=r"^stages\[1\]\.tma\.task: must be in \[0, num_tasks=2\), got 2"):
        tiny_config(tmp_path, [*base, "stages[1].tma.task=2"])


def test_cli_reports_config_error_and_override(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(tmp_path)))
    assert main(["--config", str(path), "--set", "stages[0].lora.alpha=-1", "--dry-run"]) == 2
    assert "stages[0].lora.alpha: must be > 0" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2


def test_dry_run_prints_stages_counts_and_memory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tiny_config_dict(tmp_path, steps=(5, 4, 3), names=("scd", "editctrl_local", "editctrl_global"))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    # rank-2 LoRA on attn1+attn2 q/k/v/out of all 6 tiny blocks (encoder too): 6*2*4*(2*32+2*32) parameters
    assert "stage 0 scd: 5 steps, trainable 6,144" in out
    assert "stage 1 editctrl_local: 4 steps" in out and "stage 2 editctrl_global: 3 steps" in out
    assert out.count("memory estimate") == 3 and "GiB" in out
    assert not (tmp_path / "run").exists(), "a dry run must not train or write outputs"
