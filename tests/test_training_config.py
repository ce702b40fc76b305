"""Training configs: validated on load with errors naming the bad field; the CLI's --dry-run plan."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from training_support import REPO, tiny_config_dict

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
