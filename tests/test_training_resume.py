"""Checkpoints: atomic step files with metadata; a run killed with SIGKILL resumes to the same loss sequence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open
from training_support import REPO, tiny_config_dict

from training.config import config_from_dict, config_hash

STEPS = (8, 8)
NAMES = ("scd", "editctrl_local")


def _write_config(root: Path, data_dir: Path, name: str) -> tuple[Path, dict]:
    data = tiny_config_dict(root / name, steps=STEPS, names=NAMES, data_dir=data_dir)
    data["output"].update(checkpoint_every=3, keep_checkpoints=0)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, data


def _start(config: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "training.train", "--config", str(config), "--quiet"], cwd=REPO,
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _losses(run: Path) -> dict[int, float]:
    lines = (run / "losses.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), f"steps logged twice or out of order: {steps}"
    return {r["step"]: r["loss"] for r in records}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("resume")
    data_dir = root / "data"
    full_cfg, full_data = _write_config(root, data_dir, "full")
    proc = _start(full_cfg, root / "full.log")
    assert proc.wait(timeout=600) == 0, (root / "full.log").read_text()[-3000:]
    killed_cfg, killed_data = _write_config(root, data_dir, "killed")
    run = Path(killed_data["output"]["dir"])
    proc = _start(killed_cfg, root / "killed.log")
    deadline = time.time() + 600
    while time.time() < deadline:
        if (run / "losses.jsonl").is_file() and len((run / "losses.jsonl").read_text().splitlines()) >= 5:
            break
        assert proc.poll() is None, (root / "killed.log").read_text()[-3000:]
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    before_resume = _losses(run)
    latest = json.loads((run / "latest.json").read_text())
    proc = _start(killed_cfg, root / "resumed.log")
    assert proc.wait(timeout=600) == 0, (root / "resumed.log").read_text()[-3000:]
    return {"full": Path(full_data["output"]["dir"]), "killed": run, "before_resume": before_resume,
            "latest_at_kill": latest, "resumed_log": (root / "resumed.log").read_text(), "config": killed_data}


def test_killed_run_resumes_to_the_same_losses(runs: dict) -> None:
    total = sum(STEPS)
    full = _losses(runs["full"])
    assert sorted(full) == list(range(1, total + 1))
    assert 5 <= len(runs["before_resume"]) < total, "the run was not killed mid-way"
    assert runs["latest_at_kill"]["step"] % 3 == 0 or runs["latest_at_kill"]["step"] == STEPS[0]
    assert f"resuming at step {runs['latest_at_kill']['step']}" in runs["resumed_log"]
    assert "0 encoded" in runs["resumed_log"], "cached latents must be reused on re-runs"
    resumed = _losses(runs["killed"])
    # exact: the resumed process restores the weights, AdamW moments, scheduler and every RNG from the checkpoint and
    # then does the same float32 operations in the same order as the uninterrupted run (one thread each,
    # cpu_threads: 1, on the same machine), so every later loss is the same float
    assert resumed == full, {s: (full[s], resumed.get(s)) for s in full if full[s] != resumed.get(s)}


def test_checkpoint_files_and_metadata(runs: dict) -> None:
    run = runs["killed"]
    for step in (3, 6, 8, 9, 12, 15, 16):
        assert (run / f"lora_weights_step_{step:05d}.safetensors").is_file(), step
        assert (run / f"state_step_{step:05d}" / "state.json").is_file(), step
    assert (run / "local_context_step_00012.safetensors").is_file()
    assert not list(run.glob(".*tmp*")), "temporary files left behind"
    with safe_open(str(run / "lora_weights_step_00006.safetensors"), framework="pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert all(k.startswith("diffusion_model.transformer_blocks.") for k in keys)
    assert any(k.endswith(".attn1.to_out.0.lora_A.weight") for k in keys)
    assert meta["base_model"] == "editctrl/tiny" and meta["stage"] == "scd" and meta["split_layer"] == "4"
    assert meta["lora_rank"] == "2" and json.loads(meta["lora_alpha"]) == 2.0
    assert meta["config_hash"] == config_hash(config_from_dict(runs["config"]))
    state = json.loads((run / "state_step_00012" / "state.json").read_text())
    assert state["step"] == 12 and state["stage"] == 1 and state["stage_step"] == 4
    for name in ("trainable.safetensors", "optimizer.safetensors", "rng.safetensors"):
        assert (run / "state_step_00012" / name).is_file()
