"""FSDP2 (`train.distributed: fsdp`): two CPU processes under `accelerate launch` (gloo) match one process.

One launch runs the training CLI twice in the same two processes: an uninterrupted scd → editctrl_local run (LoRA in
the sharded blocks, a replicated local-context adapter, grad accumulation), then a second run resuming from its
mid-stage step-2 checkpoint in a fresh output folder. A plain one-process run (in the test process) with the same
global batch is the reference for the losses, the LoRA and the adapter.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from comfy_server import free_port
from safetensors import safe_open
from training_support import REPO, tiny_config, tiny_config_dict

from editctrl_core.adapters import load_adapter
from editctrl_core.lora import apply_loras, read_lora
from editctrl_core.models import build_transformer, load_preset
from training.config import ConfigError, config_from_dict
from training.distributed import resolve_strategy
from training.train import Trainer, dry_run

STEPS = (3, 2)
NAMES = ("scd", "editctrl_local")
TOTAL = sum(STEPS)
#: Runs `training.train.main` once per argv list, in this process (launched twice by accelerate).
DRIVER = """import json, sys
from training.train import main
for argv in json.loads(sys.argv[1]):
    if main(argv) != 0:
        sys.exit(1)
"""


def _config(root: Path, data_dir: Path, name: str, batch: int, distributed: str) -> tuple[Path, Path, dict]:
    data = tiny_config_dict(root / name, clips=4, steps=STEPS, names=NAMES, data_dir=data_dir)
    data["train"].update(batch_size=batch, grad_accum=2, distributed=distributed)
    data["output"].update(checkpoint_every=2)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, Path(data["output"]["dir"]), data


def _run(cmd: list[str], log: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, timeout=900)
    assert proc.returncode == 0, log.read_text()[-4000:]


def _losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines() if line]
    return {r["step"]: r["loss"] for r in records}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("fsdp")
    data_dir = root / "data"
    _, single, single_data = _config(root, data_dir, "single", 2, "ddp")
    fsdp_cfg, fsdp, _ = _config(root, data_dir, "fsdp", 1, "fsdp")
    resumed_cfg, resumed, _ = _config(root, data_dir, "resumed", 1, "fsdp")
    assert Trainer(config_from_dict(single_data), resume="none", quiet=True).run().steps == TOTAL
    driver = root / "driver.py"
    driver.write_text(DRIVER)
    argvs = [["--config", str(fsdp_cfg), "--quiet"],
             ["--config", str(resumed_cfg), "--quiet", "--resume", str(fsdp / "state_step_00002")]]
    _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
          "--main_process_port", str(free_port()), str(driver), json.dumps(argvs)], root / "fsdp.log")
    return {"single": single, "fsdp": fsdp, "resumed": resumed, "log": (root / "fsdp.log").read_text()}


def test_fsdp_shards_the_blocks_and_matches_one_process(runs: dict) -> None:
    state = json.loads((runs["fsdp"] / "state_step_00002" / "state.json").read_text())
    assert state["world_size"] == 2 and state["distributed"] == "fsdp", "accelerate did not start two FSDP processes"
    held = [line for line in runs["log"].splitlines() if line.startswith("FSDP2: ")]
    assert len(held) == 4, "each process of both runs shards the blocks once"
    for line in held:
        mine, total = (int(w) for w in line.split("holds ")[1].split(" parameters")[0].split(" of their "))
        assert mine < total * 0.6, line
    single, fsdp = _losses(runs["single"]), _losses(runs["fsdp"])
    assert sorted(single) == sorted(fsdp) == list(range(1, TOTAL + 1))
    torch.testing.assert_close(torch.tensor([fsdp[s] for s in single]), torch.tensor(list(single.values())),
                               atol=1e-5, rtol=1e-5)
    assert len(set(single.values())) == TOTAL


def test_fsdp_weight_files_match_one_process(runs: dict) -> None:
    for name in ("lora_weights.safetensors", "local_context.safetensors", "lora_weights_step_00002.safetensors"):
        with safe_open(str(runs["single"] / name), "pt") as a, safe_open(str(runs["fsdp"] / name), "pt") as b:
            assert sorted(a.keys()) == sorted(b.keys()), name
            assert sorted(a.metadata()) == sorted(b.metadata()), name
            for key in a.keys():
                x, y = a.get_tensor(key), b.get_tensor(key)
                assert x.dtype == y.dtype and x.shape == y.shape, key
    a, b = read_lora(runs["single"] / "lora_weights.safetensors"), read_lora(runs["fsdp"] / "lora_weights.safetensors")
    assert set(a.layers) == set(b.layers) and b.source_format == "native"
    assert any(float(w.B.abs().max()) > 0 for w in b.layers.values()), "the FSDP run left the LoRA at zero"
    for name in a.layers:
        torch.testing.assert_close(b.layers[name].A, a.layers[name].A, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(b.layers[name].B, a.layers[name].B, atol=1e-5, rtol=1e-4)
    with apply_loras(build_transformer(load_preset("tiny")), [(b, 1.0)]) as patch:
        assert len(patch) == len(b.layers)
    local_a = load_adapter(runs["single"] / "local_context.safetensors", "editctrl/tiny", load_preset("tiny").split_layer)
    local_b = load_adapter(runs["fsdp"] / "local_context.safetensors", "editctrl/tiny", load_preset("tiny").split_layer)
    for (name, x), (_, y) in zip(local_a.state_dict().items(), local_b.state_dict().items()):
        torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-4, msg=name)


def test_fsdp_checkpoint_resumes_to_the_same_losses(runs: dict) -> None:
    full, resumed = _losses(runs["fsdp"]), _losses(runs["resumed"])
    assert sorted(resumed) == list(range(3, TOTAL + 1)), "the resumed run must start after step 2"
    torch.testing.assert_close(torch.tensor([resumed[s] for s in sorted(resumed)]),
                               torch.tensor([full[s] for s in sorted(resumed)]), atol=1e-6, rtol=1e-6)
    a = read_lora(runs["fsdp"] / "lora_weights.safetensors")
    b = read_lora(runs["resumed"] / "lora_weights.safetensors")
    for name in a.layers:
        torch.testing.assert_close(b.layers[name].B, a.layers[name].B, atol=1e-6, rtol=1e-5)


def test_bad_distributed_value_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.distributed: 'zero3' is not one of \['ddp', 'fsdp'\]"):
        tiny_config(tmp_path, ["train.distributed=zero3"])


def test_fsdp_with_one_process_falls_back_and_dry_run_names_the_strategy(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(tmp_path, ["train.distributed=fsdp"])
    with caplog.at_level(logging.WARNING, logger="editctrl.training"):
        assert resolve_strategy(cfg, 1) == "ddp"
    assert "nothing to shard" in caplog.text
    assert resolve_strategy(cfg, 2) == "fsdp"
    with pytest.raises(ConfigError, match=r"train\.optimizer"):
        resolve_strategy(tiny_config(tmp_path, ["train.distributed=fsdp", "train.optimizer=adamw8bit"]), 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    plan = dry_run(cfg)
    assert "distributed: fsdp (FSDP2), transformer blocks sharded over 2 process(es)" in plan
    assert "memory estimate per process (2 shards)" in plan
    assert "distributed: ddp" in dry_run(tiny_config(tmp_path))
