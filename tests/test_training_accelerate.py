"""The same training script under `accelerate launch` with two CPU processes (DDP over gloo) matches one process.

Bit for bit: the runs do the same float32 operations in the same order, which is what makes the comparison hold on
any machine (AdamW turns a different summation order into step differences of up to lr in elements whose gradient is
rounding-sized; see tests/test_training_fsdp.py). Every process runs one thread (`cpu_threads: 1`); two DDP
processes of batch 1 all-reduce g_a + g_b and halve it, one process of batch 1 with grad_accum 2 adds g_a/2 + g_b/2
into .grad (the loss is divided by grad_accum): the same float, since adding two floats commutes and halving is
exact. Clipping, the loss average (l_a + l_b)/2 = l_a/2 + l_b/2 and AdamW then see identical inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from comfy_server import free_port
from training_support import REPO, tiny_config_dict

from editctrl_core.loading.lora import read_lora


def _run(cmd: list[str], log: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, timeout=900)
    assert proc.returncode == 0, log.read_text()[-4000:]


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "losses.jsonl").read_text().splitlines() if line]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    configs = {}
    for name, accum in (("single", 2), ("ddp", 1)):
        data = tiny_config_dict(tmp_path / name, clips=4, steps=(3,), data_dir=data_dir)
        data["train"].update(batch_size=1, grad_accum=accum)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        configs[name] = (path, Path(data["output"]["dir"]))
    _run([sys.executable, "-m", "training.train", "--config", str(configs["single"][0]), "--quiet"],
         tmp_path / "single.log")
    _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
          "--main_process_port", str(free_port()), "-m", "training.train", "--config", str(configs["ddp"][0]),
          "--quiet"], tmp_path / "ddp.log")
    state = json.loads((configs["ddp"][1] / "state_step_00003" / "state.json").read_text())
    assert state["world_size"] == 2, "accelerate did not start two processes"
    single, ddp = _losses(configs["single"][1]), _losses(configs["ddp"][1])
    assert len(single) == len(ddp) == 3
    # the same float32 operations in the same order (module docstring): equal bit for bit
    torch.testing.assert_close(torch.tensor(ddp), torch.tensor(single), atol=0, rtol=0)
    assert len(set(single)) == 3
    a = read_lora(configs["single"][1] / "lora_weights.safetensors")
    b = read_lora(configs["ddp"][1] / "lora_weights.safetensors")
    assert set(a.layers) == set(b.layers)
    for name in a.layers:
        torch.testing.assert_close(b.layers[name].A, a.layers[name].A, atol=0, rtol=0)
        torch.testing.assert_close(b.layers[name].B, a.layers[name].B, atol=0, rtol=0)
