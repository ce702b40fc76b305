"""The training CLIs as users run them: a config or usage mistake is one `config error: …` line and exit status 2;
a non-finite loss stops the run at that step with exit status 3 and leaves the last checkpoint as it was."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from training_support import REPO, tiny_config, tiny_config_dict

from training import compute_qwen_features, compute_semantic_masks
from training.cli import run_cli
from training.data import write_synthetic_clips
from training.train import DIVERGED_EXIT, TrainingDivergedError, check_finite_state, check_step, main

ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _cli(module: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m <module> args` from the repo root."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def _assert_config_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, no traceback, and exactly one stderr line `config error: …` holding every needle."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("config error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic clip with its caption."""
    folder = tmp_path_factory.mktemp("cli_clips")
    write_synthetic_clips(folder, 1, 17, 64, 96, 0, "a caption", False)
    return folder


def test_train_cli_config_mistakes_are_one_line(tmp_path: Path, clip_dir: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    _assert_config_error(_cli("training.train", "--config", str(empty), "--set", f"data.clips={clip_dir}"),
                         "stages[0].lora: stage scd trains a LoRA but no stage up to it configures one")
    good = tmp_path / "tiny.yaml"
    good.write_text(yaml.safe_dump(tiny_config_dict(tmp_path)))
    _assert_config_error(_cli("training.train", "--config", str(good), "--set", "stages[0].lr=.inf"),
                         "stages[0].lr: must be a finite number, got inf")


@pytest.mark.parametrize("argv, needle", [
    (["--set", "stages[x].lr=1"], "'stages[x]' needs a non-negative list index"),
    (["--set", "stages[3].lr=1e-3"], "stages[3]: index out of range"),
    (["--set", "train.seed.x=1"], "train.seed holds 3, not a section of fields"),
    (["--set", "stages[0].lr.x=1"], "stages[0].lr holds 0.01, not a section of fields"),
    (["--set", "train"], "expected KEY=VALUE"),
    (["--set", "train.seed=[1"], "the value is not valid YAML"),
    (["--set", "train.weight_decay=nan"], "train.weight_decay: must be a finite number, got nan"),
    (["--resume", "nowhere"], "--resume nowhere: no complete checkpoint there"),
    (["--set", "data.synthetic=null", "--set", "data.clips=/nonexistent/clips"],
     "data.clips: /nonexistent/clips is not a folder"),
    (["--max-steps", "-1"], "--max-steps must be >= 0"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_train_main_config_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str],
                                    needle: str) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(tmp_path)))
    assert main(["--config", str(path), "--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("config error: ") and needle in err[0], err


def test_train_main_without_config(capsys: pytest.CaptureFixture) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("config error: the following arguments are required: --config"), err


def test_precompute_cli_mistakes_are_one_line(tmp_path: Path, clip_dir: Path) -> None:
    out = str(tmp_path / "out")
    _assert_config_error(_cli("training.compute_qwen_features", "--clips", str(tmp_path / "none"), "--out", out,
                              "--qwen", "tiny"), f"--clips {tmp_path / 'none'}: not a folder")
    _assert_config_error(_cli("training.compute_semantic_masks", "--clips", str(clip_dir), "--out", out,
                              "--qwen", str(tmp_path / "no_qwen")), f"--qwen {tmp_path / 'no_qwen'}: no such folder")
    assert not Path(out).exists(), "a refused run must not write outputs"


def test_precompute_main_without_qwen(tmp_path: Path, clip_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_cli(compute_semantic_masks.main, ["--clips", str(clip_dir), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("config error: the following arguments are required: --qwen"), err


@pytest.mark.parametrize("tool, argv, needle", [
    ("masks", ["--shard", "3/2"], "--shard '3/2': need 0 <= INDEX < COUNT"),
    ("masks", ["--shard", "x"], "--shard must look like INDEX/COUNT"),
    ("masks", ["--keyframes", "0"], "--keyframes must be >= 1, got 0"),
    ("masks", ["--sam", "tiny-sam9"], "--sam tiny-sam9: no such folder"),
    ("masks", ["--device", "gpu"], "--device 'gpu'"),
    ("masks", ["--height", "100", "--width", "96"], "--height must be a positive multiple of 32"),
    ("masks", ["--height", "64"], "--height and --width go together"),
    ("qwen", ["--k-frames", "0"], "--k-frames must be >= 1, got 0"),
    ("qwen", ["--template", "no caption slot"], "--template must contain '{caption}'"),
    ("qwen", ["--save-dtype", "int8"], "argument --save-dtype: invalid choice: 'int8'"),
])
def test_precompute_main_mistakes(tmp_path: Path, clip_dir: Path, capsys: pytest.CaptureFixture, tool: str,
                                  argv: list[str], needle: str) -> None:
    module = compute_semantic_masks if tool == "masks" else compute_qwen_features
    base = ["--clips", str(clip_dir), "--out", str(tmp_path / "out"), "--qwen", "tiny"]
    assert run_cli(module.main, base + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("config error: ") and needle in err[0], err
    assert not (tmp_path / "out").exists()


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_non_finite_loss_stops_at_that_step_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    data = tiny_config_dict(tmp_path, steps=(4,))
    data["output"]["checkpoint_every"] = 2
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(data))
    run = Path(data["output"]["dir"])
    first = _cli("training.train", "--config", str(config), "--quiet", "--max-steps", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    good = run / "state_step_00002"
    before = _digest(good)
    weights = (run / "lora_weights_step_00002.safetensors").read_bytes()
    # corrupt every cached sample: latents 1e20 times too large are finite (they pass the cache check) but square to
    # more than float32 holds (1e40 > 3.4e38), so the first loss they reach is not finite
    caches = sorted(Path(data["data"]["cache_dir"]).glob("*.safetensors"))
    assert caches
    for path in caches:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        tensors = load_file(str(path))
        for key in ("latents", "target", "fill"):
            if key in tensors:
                tensors[key] = tensors[key] * 1e20
        save_file(tensors, str(path), metadata=meta)
    second = _cli("training.train", "--config", str(config), "--quiet")
    assert second.returncode == DIVERGED_EXIT, second.stderr[-3000:]
    assert "Traceback" not in second.stderr, second.stderr[-3000:]
    line = next(x for x in second.stderr.splitlines() if x.startswith("error: "))
    assert "training stopped at step 3 (stage 0 scd, its step 3 of 4)" in line, line
    assert "the loss is nan" in line or "the loss is inf" in line, line
    assert "the first step this run took already overflows" in line and "delete data.cache_dir" in line, line
    assert f"the last good checkpoint is {good}" in line, line
    assert _digest(good) == before, "the last good checkpoint changed"
    assert (run / "lora_weights_step_00002.safetensors").read_bytes() == weights
    assert json.loads((run / "latest.json").read_text())["state"] == good.name
    assert not list(run.glob("*step_00003*")) and not list(run.glob("*step_00004*"))
    assert not (run / "lora_weights.safetensors").exists(), "a stopped run must not write final weights"
    steps = [json.loads(x)["step"] for x in (run / "losses.jsonl").read_text().splitlines() if x]
    assert steps == [1, 2]
    for tensor in load_file(str(run / "lora_weights_step_00002.safetensors")).values():
        assert bool(torch.isfinite(tensor).all())


def test_check_step_names_the_cause(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, ["train.max_grad_norm=0", "model.dtype=bfloat16", "train.mixed_precision=bf16"])
    check_step(2, 0, cfg, 1, 0.25, 3.0, tmp_path, previous_loss=0.3)
    with pytest.raises(TrainingDivergedError) as err:
        check_step(2, 0, cfg, 1, 0.25, float("inf"), tmp_path, previous_loss=0.3)
    text = str(err.value)
    assert text.startswith("training stopped at step 2 (stage 0 scd, its step 2 of 3): the loss is 0.25 but the "
                           "gradient norm is inf"), text
    assert "the run diverged after a loss of 0.3: lower stages[0].lr (now 0.01)" in text
    assert "set train.max_grad_norm (now 0: no clipping)" in text and "train in float32" in text
    assert "no checkpoint was written before this step" in text
    with pytest.raises(TrainingDivergedError, match=r"not writing the step-7 checkpoint: transformer\.x holds 1 "
                                                    r"non-finite values \(1 NaN"):
        check_finite_state({"transformer.x": torch.tensor([1.0, float("nan")])}, 7)


def test_cached_sample_with_nan_is_a_data_error(tmp_path: Path) -> None:
    from training.data import DataError, load_sample

    path = tmp_path / "s.safetensors"
    save_file({"latents": torch.tensor([[0.0, float("nan")]]), "text_embeds": torch.zeros(1, 2),
               "text_mask": torch.ones(1, dtype=torch.uint8), "fill": torch.zeros(1, 2)}, str(path))
    with pytest.raises(DataError, match=r"s\.safetensors: latents holds 1 non-finite values .*delete it and re-run"):
        load_sample(path)


def test_cached_sample_without_its_background_fill_is_a_data_error(tmp_path: Path) -> None:
    """The fill is what the edit region is blanked to (the grey-clip latents, as at inference): a cache without it
    is refused instead of training on zeros."""
    from training.data import DataError, load_sample

    path = tmp_path / "s.safetensors"
    save_file({"latents": torch.zeros(1, 2), "text_embeds": torch.zeros(1, 2),
               "text_mask": torch.ones(1, dtype=torch.uint8)}, str(path))
    with pytest.raises(DataError, match=r"s\.safetensors: cache file has no 'fill'; delete it and re-run"):
        load_sample(path)
