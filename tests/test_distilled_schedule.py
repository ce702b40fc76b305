"""`scheduler = auto`: the official distilled σ list for a checkpoint that says it is distilled, LTX-2's own schedule
otherwise; the sampler node says which ran and why.

Tiny checkpoints written here: the same weights with and without the metadata that marks them distilled (and
under an official distilled file name), loaded by our loader, and on a real server through EditCtrl Load LTX-2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from comfy_server import ComfyServer
from safetensors import safe_open
from safetensors.torch import save_file
from test_native_interop import _saved_latent, _source_nodes

from editctrl_core.edit.sampler import SCHEDULERS
from editctrl_core.edit.schedules import (
    AUTO,
    DISTILLED_SIGMAS,
    checkpoint_distilled,
    ltx2_sigmas,
    resolve_scheduler,
)
from editctrl_core.loading.models import (
    build_transformer,
    build_vae,
    load_models,
    load_preset,
    save_transformer_official,
    source_metadata,
)

PRESET = load_preset("tiny")
MARKED_CONFIG = {"transformer": {"distilled": True}}


def write_checkpoint(path: Path, *, config_flag: object = None, top_level: str | None = None) -> Path:
    """The tiny preset (transformer + VAE) in the official single-file layout; `config_flag` goes into the ``config``
    metadata's transformer section as ``distilled``, `top_level` into a ``distilled`` metadata entry."""
    save_transformer_official(build_transformer(PRESET), path, build_vae(PRESET))
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if config_flag is not None:
        config = json.loads(metadata.get("config", "{}"))
        config.setdefault("transformer", {})["distilled"] = config_flag
        metadata["config"] = json.dumps(config)
    if top_level is not None:
        metadata["distilled"] = top_level
    save_file(tensors, str(path), metadata=metadata)
    return path


# ------------------------------------------------------------------------------------------------- the rule

def test_auto_reads_the_metadata_then_the_official_file_name() -> None:
    marked = {"config": json.dumps(MARKED_CONFIG)}
    assert resolve_scheduler(AUTO, marked, "any.safetensors")[0] == "distilled"
    assert resolve_scheduler(AUTO, {"config": json.dumps({"distilled": True})})[0] == "distilled"
    assert resolve_scheduler(AUTO, {"distilled": "true"})[0] == "distilled"
    # metadata wins over the name, either way
    assert resolve_scheduler(AUTO, {"distilled": "false"}, "ltx-2-19b-distilled.safetensors")[0] == "ltx2"
    assert resolve_scheduler(AUTO, {"config": json.dumps({"transformer": {"distilled": False}})},
                             "ltx-2.3-22b-distilled.safetensors")[0] == "ltx2"
    for name in ("ltx-2-19b-distilled.safetensors", "ltx-2-19b-distilled-fp8.safetensors",
                 "/models/ltx-2.3-22b-distilled.safetensors"):
        chosen, why = resolve_scheduler(AUTO, {}, name)
        assert chosen == "distilled" and "named like Lightricks' distilled checkpoints" in why, why
    for name in ("ltx-2-19b-dev.safetensors", "ltx-2-19b-dev-fp8.safetensors", "my-distilled.safetensors",
                 "ltx-2-undistilledx.safetensors", None):
        assert resolve_scheduler(AUTO, {}, name)[0] == "ltx2", name
    # what is not a boolean says nothing; broken config JSON is not an error here (the loader reports files)
    for metadata in ({"distilled": "yes"}, {"config": json.dumps({"transformer": {"distilled": "true"}})},
                     {"config": "{not json"}, {"config": "[1]"}):
        assert checkpoint_distilled(metadata)[0] is False, metadata
    chosen, why = resolve_scheduler(AUTO, marked)
    assert why == 'σ schedule distilled: auto chose it because the checkpoint is distilled by its metadata ' \
                  'config.transformer "distilled": true'


def test_explicit_choices_and_sigmas_are_taken_as_given() -> None:
    marked = {"config": json.dumps(MARKED_CONFIG)}
    for name in SCHEDULERS:
        assert resolve_scheduler(name, marked) == (name, f"σ schedule {name} as chosen")
    assert resolve_scheduler(AUTO, marked, sigmas_given=True) == \
        ("ltx2", "σ from the SIGMAS input (it overrides scheduler auto)")
    assert resolve_scheduler("linear", marked, sigmas_given=True)[0] == "linear"


def test_source_metadata_of_files_folders_and_presets(tmp_path: Path) -> None:
    plain = write_checkpoint(tmp_path / "plain.safetensors")
    marked = write_checkpoint(tmp_path / "marked.safetensors", config_flag=True)
    flagged = write_checkpoint(tmp_path / "flagged.safetensors", top_level="true")
    named = write_checkpoint(tmp_path / "ltx-2-tiny-distilled.safetensors")
    denied = write_checkpoint(tmp_path / "ltx-2-tiny-distilled-denied.safetensors", top_level="false")
    expected = {plain: "ltx2", marked: "distilled", flagged: "distilled", named: "distilled", denied: "ltx2"}
    weights = None
    for path, schedule in expected.items():
        loaded = load_models(path)  # the marker does not disturb loading
        assert loaded.vae is not None
        state = loaded.transformer.state_dict()
        if weights is None:
            weights = state
        assert all(torch.equal(state[k], weights[k]) for k in weights)  # the same weights in every file
        assert resolve_scheduler(AUTO, source_metadata(loaded.source), loaded.source)[0] == schedule, path.name
    assert "config" in source_metadata(plain)
    assert source_metadata("preset:tiny") == {} and source_metadata(None) == {}
    assert source_metadata(tmp_path / "gone.safetensors") == {}
    folder = tmp_path / "folder" / "transformer"
    folder.mkdir(parents=True)
    save_file({"x": torch.zeros(1)}, str(folder / "diffusion_pytorch_model.safetensors"), metadata={"distilled": "true"})
    assert resolve_scheduler(AUTO, source_metadata(folder.parent), str(folder.parent))[0] == "distilled"


# -------------------------------------------------------------------------------------------- a real server

def _edit(weights: str, prefix: str, **inputs: object) -> dict:
    return {
        f"{prefix}0": {"class_type": "EditCtrlModelLoader", "inputs": {"preset": "auto", "weights": weights,
                                                                       "dtype": "float32", "device": "cpu",
                                                                       "split_layer": 0}},
        f"{prefix}1": {"class_type": "EditCtrlSampler", "inputs": {
            "model": [f"{prefix}0", 0], "edit_context": ["4", 0], "positive": ["6", 0], "seed": 7, "steps": 8,
            "cfg": 1.0, "shift": 1.0, "dilation": 1, "strength": 1.0, "window_frames": 0, "mode": "training_free",
            **inputs}},
        f"{prefix}2": {"class_type": "EditCtrlEditToLatent", "inputs": {"latents": [f"{prefix}1", 0],
                                                                        "noise_mask": False}},
        f"{prefix}3": {"class_type": "SaveLatent", "inputs": {"samples": [f"{prefix}2", 0],
                                                              "filename_prefix": f"distilled/{prefix}"}},
    }


def _schedule_line(history: dict, node: str) -> str:
    text = "".join(history["outputs"][node]["text"])
    return next(line for line in text.splitlines() if line.startswith("σ "))


def test_sampler_node_picks_the_distilled_list_from_the_checkpoints_metadata(comfy_server: ComfyServer) -> None:
    """The same weights in two files, one marked distilled in its metadata: `auto` runs the distilled list on the
    marked one (the edit equals scheduler 'distilled'), LTX-2's schedule on the other (equals 'ltx2'), and the node
    says which and why; `auto` on the marked file with 30 steps is refused, naming both fixes."""
    folder = comfy_server.models_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    write_checkpoint(folder / "editctrl-sched-plain.safetensors")
    write_checkpoint(folder / "editctrl-sched-marked.safetensors", config_flag=True)
    plain, marked = "checkpoints/editctrl-sched-plain.safetensors", "checkpoints/editctrl-sched-marked.safetensors"
    wf = _source_nodes()
    wf.update({**_edit(marked, "ma"), **_edit(marked, "md", scheduler="distilled"), **_edit(plain, "pa"),
               **_edit(plain, "pl", scheduler="ltx2")})
    del wf["pa1"]["inputs"]["mode"]  # and the node's defaults otherwise: mode auto → training_free here
    result = comfy_server.run(wf, timeout=300, check=False)
    assert result.error is None, result.error
    line = _schedule_line(result.history, "ma1")
    assert line == ('σ schedule distilled: auto chose it because the checkpoint is distilled by its metadata '
                    'config.transformer "distilled": true: 1, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, '
                    '0.421875, 0'), line
    assert _schedule_line(result.history, "md1").startswith("σ schedule distilled as chosen: 1, 0.99375")
    tokens = 12  # 9 frames at 64x96: 2 x 2 x 3 latent tokens
    assert torch.equal(torch.tensor([float(v) for v in line.rsplit(": ", 1)[1].split(", ")]),
                       torch.tensor(DISTILLED_SIGMAS))
    plain_line = _schedule_line(result.history, "pa1")
    assert plain_line.startswith("σ schedule ltx2: auto chose it because the checkpoint does not say it is "
                                 "distilled"), plain_line
    listed = torch.tensor([float(v) for v in plain_line.rsplit(": ", 1)[1].split(", ")])
    assert torch.equal(listed, ltx2_sigmas(8, tokens))
    latents = {p: _saved_latent(comfy_server, result.history, f"{p}3") for p in ("ma", "md", "pa", "pl")}
    assert torch.equal(latents["ma"], latents["md"]) and torch.equal(latents["pa"], latents["pl"])
    assert float((latents["ma"] - latents["pa"]).abs().max()) > 1e-2  # same weights: only the schedule differs
    too_many = _source_nodes()
    too_many.update(_edit(marked, "ma", steps=30))
    refused = comfy_server.run(too_many, timeout=300, check=False)
    assert refused.error is not None
    message = refused.error["data"]["exception_message"]
    assert "the distilled schedule has 8 steps; set steps to 8 (got 30), or choose scheduler ltx2 (σ schedule " \
           "distilled: auto chose it because the checkpoint is distilled by its metadata" in message, message


def test_scheduler_input_offers_auto_by_default(comfy_server: ComfyServer) -> None:
    spec = comfy_server.object_info("EditCtrlSampler")["EditCtrlSampler"]["input"]["optional"]["scheduler"]
    options = spec[1]["options"] if isinstance(spec[0], str) else spec[0]
    assert list(options) == [AUTO, *SCHEDULERS] and spec[1]["default"] == AUTO


@pytest.mark.parametrize("name", ["ltx2", "distilled", "linear"])
def test_every_named_schedule_is_one_the_sampler_knows(name: str) -> None:
    from editctrl_core.edit.sampler import SamplerSettings

    steps = len(DISTILLED_SIGMAS) - 1 if name == "distilled" else 4
    SamplerSettings(steps=steps, mode="training_free", scheduler=resolve_scheduler(name)[0]).validate()
    with pytest.raises(ValueError, match="scheduler must be one of"):
        SamplerSettings(mode="training_free", scheduler=AUTO).validate()  # auto is resolved before the sampler
