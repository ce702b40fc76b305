"""LoRA and adapter loader nodes on a real ComfyUI server, with files written by the training module."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from comfy_server import ComfyServer
from PIL import Image
from training_support import tiny_config

from editctrl_core.edit.adapters import load_adapter, save_adapter
from editctrl_core.loading.lora import LoraFile, LoraWeights, read_lora, save_lora
from editctrl_core.media.synthetic import make_clip
from editctrl_core.media.video_io import write_video
from training.train import Trainer

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "graphs" / "editctrl_demo.api.json"
CLIP = "lora_nodes_clip.mp4"


@pytest.fixture(scope="module")
def files(comfy_server: ComfyServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Train a short tiny run (scd + local + global) and install its files in the server's model folders."""
    root = tmp_path_factory.mktemp("lora_nodes")
    cfg = tiny_config(root, steps=(4, 2, 2), names=("scd", "editctrl_local", "editctrl_global"))
    result = Trainer(cfg, resume="none", quiet=True).run()
    loras, adapters = comfy_server.models_dir / "loras", comfy_server.models_dir / "editctrl"
    loras.mkdir(parents=True, exist_ok=True)
    adapters.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.files["lora"], loras / "trained_tiny.safetensors")
    shutil.copyfile(result.files["local"], adapters / "trained_local.safetensors")
    shutil.copyfile(result.files["global"], adapters / "trained_global.safetensors")
    g = torch.Generator().manual_seed(0)
    wide = {"transformer_blocks.0.attn1.to_q": LoraWeights(torch.randn(2, 64, generator=g),
                                                            torch.randn(64, 2, generator=g), 2.0)}
    save_lora(LoraFile(wide), loras / "wider_model.safetensors")
    trained = LoraFile(dict(read_lora(result.files["lora"]).layers))
    save_lora(trained, loras / "other_base.safetensors", {"base_model": "Lightricks/LTX-2"})
    local = load_adapter(result.files["local"], "editctrl/tiny", 4)
    save_adapter(local, adapters / "split3_local.safetensors", "editctrl/tiny", 3)
    clip = make_clip(25, 128, 192, seed=3)
    path = root / CLIP
    write_video(path, clip.frames, fps=24)
    comfy_server.upload_image(path)
    return {"lora": "trained_tiny.safetensors", "local": "trained_local.safetensors",
            "global": "trained_global.safetensors"}


def _workflow(model_chain: list[dict]) -> dict:
    """The demo edit workflow saving composite frames, with `model_chain` nodes between loader and sampler."""
    wf = json.loads(WORKFLOW.read_text())
    for key in ("12", "13", "14", "15", "16"):
        wf.pop(key)
    wf["1"]["inputs"]["file"] = CLIP
    wf["17"] = {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "lora_nodes/frames"}}
    source = ["3", 0]
    for i, node in enumerate(model_chain):
        key = str(30 + i)
        wf[key] = {"class_type": node["class_type"], "inputs": {**node["inputs"], "model": source}}
        source = [key, 0]
    wf["9"]["inputs"]["model"] = source
    wf["9"]["inputs"]["mode"] = "scd"  # the same decoder with and without the SCD LoRA (auto would switch modes)
    return wf


def _frames(server: ComfyServer, result) -> np.ndarray:
    images = result.history["outputs"]["17"]["images"]
    return np.stack([np.array(Image.open(io.BytesIO(server.view(i["filename"], i["subfolder"], i["type"]))))
                     for i in images]).astype(np.int16)


def _lora(name: str, strength: float) -> dict:
    return {"class_type": "EditCtrlLoraLoader", "inputs": {"lora_name": name, "strength": strength}}


def _adapters(local: str = "(none)", glob: str = "(none)") -> dict:
    return {"class_type": "EditCtrlAdapterLoader", "inputs": {"local_adapter": local, "global_adapter": glob}}


def test_nodes_are_listed_with_the_files(comfy_server: ComfyServer, files: dict) -> None:
    info = comfy_server.object_info()
    lora_inputs = info["EditCtrlLoraLoader"]["input"]["required"]
    assert files["lora"] in lora_inputs["lora_name"][0] or files["lora"] in str(lora_inputs["lora_name"])
    assert "strength" in lora_inputs
    adapter = str(info["EditCtrlAdapterLoader"]["input"]["required"]["local_adapter"])
    assert files["local"] in adapter and files["global"] in adapter


def test_trained_lora_and_adapters_change_only_the_edit(comfy_server: ComfyServer, files: dict) -> None:
    base = _frames(comfy_server, comfy_server.run(_workflow([])))
    zero = _frames(comfy_server, comfy_server.run(_workflow([_lora(files["lora"], 0.0)])))
    assert np.array_equal(base, zero), "strength 0 must leave the edit unchanged"
    one = _frames(comfy_server, comfy_server.run(_workflow([_lora(files["lora"], 1.0)])))
    stacked = _frames(comfy_server, comfy_server.run(_workflow([_lora(files["lora"], 1.0), _lora(files["lora"], 0.7),
                                                                _adapters(files["local"], files["global"])])))
    inside = (slice(None), slice(40, 112), slice(56, 120))
    for edited in (one, stacked):
        assert np.abs(edited[inside] - base[inside]).max() > 0
        outside = np.ones(base.shape[1:3], dtype=bool)
        outside[16:136, 24:152] = False
        assert np.array_equal(edited[:, outside], base[:, outside]), "pixels beyond the feathered mask changed"
    assert not np.array_equal(one, stacked)


@pytest.mark.parametrize("chain, message", [
    ([_lora("wider_model.safetensors", 1.0)], "does not fit this model"),
    ([_lora("other_base.safetensors", 1.0)], "trained for base model 'Lightricks/LTX-2'"),
    ([_adapters(local="split3_local.safetensors")], "split at layer 3"),
])
def test_files_for_another_model_are_refused(comfy_server: ComfyServer, files: dict, chain, message: str) -> None:
    result = comfy_server.run(_workflow(chain), check=False)
    assert result.error is not None
    text = str(result.error.get("data", {}).get("exception_message", ""))
    assert message in text, text
