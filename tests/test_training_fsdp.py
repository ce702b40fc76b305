"""FSDP2 (`train.distributed: fsdp`): two CPU processes under `accelerate launch` (gloo) match one process bit for bit.

Why bit for bit, and not "close": AdamW divides each element's step by that element's own gradient scale, so where a
gradient element is as small as the float32 rounding noise of the sum that produced it, two summation orders give
steps of different size or sign, up to lr per step (1e-2 here). No rounding-sized tolerance survives that, and which
elements it hits differs from CPU to CPU (issue 10: 2.5e-5 against an atol of 1e-5 elsewhere). So the runs compared
here do the same float32 operations in the same order, and then every loss, gradient and AdamW step is the same
float on any machine:

- every process runs one thread (`cpu_threads: 1`) and computes each sample with the same kernels on the same shapes;
- `fsdp` (2 processes x batch 1, grad_accum 1) against `single` (1 process x batch 1, grad_accum 2), same samples:
  `single` adds the two micro-batch gradients into .grad, g_a/2 + g_b/2 (the loss is divided by grad_accum: an exact
  power-of-two scaling); FSDP reduce-scatters g_a and g_b averaged over 2 processes, g_a/2 + g_b/2 again (adding two
  floats commutes, halving is exact), and the replicated adapter's all-reduce gives (g_a + g_b)/2, the same float;
  the logged loss is l_a/2 + l_b/2 = (l_a + l_b)/2 in both;
- `fsdp_accum` (2 processes x batch 1, grad_accum 2) against `ddp_accum` (the same under DDP): each process sums its
  two micro-batches locally, then the processes are summed, in both;
- gradient clipping scales by exactly 1.0 while the norm stays below train.max_grad_norm (checked below for the
  sharded LoRA stage, whose norm FSDP sums in another order); the adapter stage clips by torch's clip_grad_norm_ of
  identical replicated gradients in both.

The logged gradient norms are compared with the float32 bound of a reordered sum of n squares instead (Higham):
each computed sum is within γ_n = n·u/(1 − n·u) of the exact one (u = 2^-24), so two orders differ by at most 2γ_n
relative, and the square root halves that.

`resumed` resumes `fsdp_accum` from its mid-stage step-2 checkpoint in a fresh output folder: the same operations
again, so it matches bit for bit too. The launch runs the training CLI four times in the same two processes; the
one-process reference runs as a subprocess with the same environment.
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

from editctrl_core.edit.adapters import load_adapter
from editctrl_core.loading.lora import apply_loras, read_lora
from editctrl_core.loading.models import build_transformer, load_preset
from training.config import ConfigError, TrainConfig
from training.distributed import resolve_strategy
from training.train import dry_run

STEPS = (3, 2)
NAMES = ("scd", "editctrl_local")
TOTAL = sum(STEPS)
U = 2.0 ** -24
#: Runs `training.train.main` once per argv list, in this process (launched twice by accelerate).
DRIVER = """import json, sys
from training.train import main
for argv in json.loads(sys.argv[1]):
    if main(argv) != 0:
        sys.exit(1)
"""
ENV = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _config(root: Path, data_dir: Path, name: str, batch: int, accum: int, distributed: str) -> tuple[Path, Path]:
    data = tiny_config_dict(root / name, clips=4, steps=STEPS, names=NAMES, data_dir=data_dir)
    data["train"].update(batch_size=batch, grad_accum=accum, distributed=distributed)
    data["output"].update(checkpoint_every=2)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, Path(data["output"]["dir"])


def _run(cmd: list[str], log: Path) -> None:
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **ENV}, stdout=log.open("w"), stderr=subprocess.STDOUT,
                          timeout=900)
    assert proc.returncode == 0, log.read_text()[-4000:]


def _records(run: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines() if line]
    return {r["step"]: r for r in records}


def _losses(run: Path) -> dict[int, float]:
    return {s: r["loss"] for s, r in _records(run).items()}


def _assert_same_weights(a_run: Path, b_run: Path, names: tuple[str, ...]) -> None:
    """Every tensor of each weight file equal bit for bit (same keys, metadata keys, dtypes and shapes)."""
    for name in names:
        with safe_open(str(a_run / name), "pt") as a, safe_open(str(b_run / name), "pt") as b:
            assert sorted(a.keys()) == sorted(b.keys()), name
            assert sorted(a.metadata()) == sorted(b.metadata()), name
            for key in a.keys():
                x, y = a.get_tensor(key), b.get_tensor(key)
                assert x.dtype == y.dtype and x.shape == y.shape, key
                torch.testing.assert_close(y, x, atol=0, rtol=0, msg=f"{name}: {key}")


def _lora_elements(run: Path) -> int:
    """How many numbers the run's LoRA holds (the n of its gradient-norm sum)."""
    return sum(w.A.numel() + w.B.numel() for w in read_lora(run / "lora_weights.safetensors").layers.values())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("fsdp")
    data_dir = root / "data"
    single_cfg, single = _config(root, data_dir, "single", 1, 2, "ddp")
    configs = {name: _config(root, data_dir, name, 1, accum, strategy)
               for name, accum, strategy in (("fsdp", 1, "fsdp"), ("fsdp_accum", 2, "fsdp"),
                                             ("ddp_accum", 2, "ddp"), ("resumed", 2, "fsdp"))}
    _run([sys.executable, "-m", "training.train", "--config", str(single_cfg), "--quiet"], root / "single.log")
    driver = root / "driver.py"
    driver.write_text(DRIVER)
    argvs = [["--config", str(configs[name][0]), "--quiet"] for name in ("fsdp", "fsdp_accum", "ddp_accum")]
    argvs.append(["--config", str(configs["resumed"][0]), "--quiet", "--resume",
                  str(configs["fsdp_accum"][1] / "state_step_00002")])
    _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
          "--main_process_port", str(free_port()), str(driver), json.dumps(argvs)], root / "fsdp.log")
    return {"single": single, **{name: out for name, (_, out) in configs.items()},
            "log": (root / "fsdp.log").read_text()}


def test_fsdp_shards_the_blocks_and_matches_one_process(runs: dict) -> None:
    state = json.loads((runs["fsdp"] / "state_step_00002" / "state.json").read_text())
    assert state["world_size"] == 2 and state["distributed"] == "fsdp", "accelerate did not start two FSDP processes"
    held = [line for line in runs["log"].splitlines() if line.startswith("FSDP2: ")]
    assert len(held) == 6, "each process of the three FSDP runs shards the blocks once"
    for line in held:
        mine, total = (int(w) for w in line.split("holds ")[1].split(" parameters")[0].split(" of their "))
        assert mine < total * 0.6, line
    single, fsdp = _losses(runs["single"]), _losses(runs["fsdp"])
    assert sorted(single) == sorted(fsdp) == list(range(1, TOTAL + 1))
    # the same float32 operations in the same order (module docstring): equal bit for bit
    torch.testing.assert_close(torch.tensor([fsdp[s] for s in single]), torch.tensor(list(single.values())),
                               atol=0, rtol=0)
    assert len(set(single.values())) == TOTAL


def test_clipping_stays_inactive_on_the_sharded_lora_and_norms_agree(runs: dict) -> None:
    """The precondition of the bit-for-bit comparison, and FSDP's sharded gradient norm against one process's."""
    max_norm = TrainConfig().max_grad_norm
    n = _lora_elements(runs["single"])
    # each computed sum of n squares is within γ_n of the exact one in any order, so two orders differ by <= 2γ_n
    # relative; the square root halves that, and the per-tensor square roots of torch's norm add a few u
    gamma = n * U / (1 - n * U)
    rel = gamma + 4 * U
    for a_name, b_name in (("single", "fsdp"), ("ddp_accum", "fsdp_accum")):
        a, b = _records(runs[a_name]), _records(runs[b_name])
        for step in range(1, STEPS[0] + 1):
            assert a[step]["grad_norm"] < max_norm, (
                f"{a_name} step {step}: the LoRA gradient norm {a[step]['grad_norm']} reaches max_grad_norm, so FSDP "
                "and one process clip by norms summed in different orders and stop matching bit for bit")
            assert b[step]["grad_norm"] == pytest.approx(a[step]["grad_norm"], rel=rel, abs=0), (a_name, step)


def test_fsdp_weight_files_match_one_process(runs: dict) -> None:
    names = ("lora_weights.safetensors", "local_context.safetensors", "lora_weights_step_00002.safetensors")
    _assert_same_weights(runs["single"], runs["fsdp"], names)
    b = read_lora(runs["fsdp"] / "lora_weights.safetensors")
    assert b.source_format == "native"
    assert any(float(w.B.abs().max()) > 0 for w in b.layers.values()), "the FSDP run left the LoRA at zero"
    with apply_loras(build_transformer(load_preset("tiny")), [(b, 1.0)]) as patch:
        assert len(patch) == len(b.layers)
    local = load_adapter(runs["fsdp"] / "local_context.safetensors", "editctrl/tiny", load_preset("tiny").split_layer)
    assert any(float(p.detach().abs().max()) > 0 for p in local.parameters())


def test_fsdp_gradient_accumulation_matches_ddp(runs: dict) -> None:
    ddp, fsdp = _losses(runs["ddp_accum"]), _losses(runs["fsdp_accum"])
    assert sorted(ddp) == sorted(fsdp) == list(range(1, TOTAL + 1))
    # the same sums in the same order (module docstring): equal bit for bit
    torch.testing.assert_close(torch.tensor([fsdp[s] for s in ddp]), torch.tensor(list(ddp.values())), atol=0, rtol=0)
    assert ddp != _losses(runs["single"]), "grad_accum 2 doubles the global batch: other samples, other losses"
    _assert_same_weights(runs["ddp_accum"], runs["fsdp_accum"],
                         ("lora_weights.safetensors", "local_context.safetensors"))


def test_fsdp_checkpoint_resumes_to_the_same_losses(runs: dict) -> None:
    full, resumed = _losses(runs["fsdp_accum"]), _losses(runs["resumed"])
    assert sorted(resumed) == list(range(3, TOTAL + 1)), "the resumed run must start after step 2"
    # restored weights, optimizer and RNG state, then the same operations in the same order: equal bit for bit
    torch.testing.assert_close(torch.tensor([resumed[s] for s in sorted(resumed)]),
                               torch.tensor([full[s] for s in sorted(resumed)]), atol=0, rtol=0)
    _assert_same_weights(runs["fsdp_accum"], runs["resumed"], ("lora_weights.safetensors", "local_context.safetensors"))


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
