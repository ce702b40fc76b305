"""The templates in example_workflows/ (what ComfyUI's Browse Templates dialog lists for this pack).

Each one is a valid UI-format workflow (never an API prompt), has a same-name .jpg thumbnail (the name the frontend
asks for), a MarkdownNote saying what it does and where each model goes, `properties.models` on its loader nodes in
the frontend's schema, a layout with no overlapping nodes, and converts through the live server's /object_info to
the API graph scripts/make_ui_workflow.py defines for it.  The fresh-install template runs to success on the real
server with nothing but what the pack brings: the demo clip it writes into input/ on first load, the tiny presets.
The same templates are loaded and measured in a real browser by tests/test_browser.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from comfy_server import ComfyServer
from PIL import Image
from workflow_convert import convert

from editctrl_core.media.video_io import read_video

REPO = Path(__file__).resolve().parents[1]
TEMPLATE_DIR = REPO / "example_workflows"
sys.path.insert(0, str(REPO / "scripts"))

import make_ui_workflow as mui  # noqa: E402

FILES = sorted(TEMPLATE_DIR.glob("*.json"))
SPECS = {t.name: t for t in mui.TEMPLATES}
PACK = "ComfyUI-EditCtrl"  # the folder name ComfyUI serves the templates under (custom_nodes/<name>)
#: the frontend's model-file schema (zModelFile): name, url (a valid URL), directory; hash fields optional
MODEL_KEYS = {"name", "url", "directory"}
URL = re.compile(r"^https://[A-Za-z0-9.-]+\.[A-Za-z]{2,}(/[^\s]*)?$")


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def combo_options(spec: Any) -> list[Any] | None:
    """A combo input's options (both /object_info forms), None for other inputs."""
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return spec[1].get("options", [])
    return None


def loaders(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [n for n in workflow["nodes"] if n["type"].endswith("Loader")]


@pytest.fixture(scope="module")
def object_info(comfy_server: ComfyServer) -> dict[str, Any]:
    return comfy_server.object_info()


def test_every_template_is_generated_and_listed() -> None:
    """example_workflows/ holds exactly the generator's templates, each a .json with its .jpg, nothing else."""
    assert FILES, "no templates in example_workflows/"
    assert {p.stem for p in FILES} == set(SPECS)
    assert sorted(p.name for p in TEMPLATE_DIR.iterdir()) == sorted(
        [f"{name}.json" for name in SPECS] + [f"{name}.jpg" for name in SPECS])
    assert sum(t.runs_on_fresh_install for t in mui.TEMPLATES) == 1


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_template_is_valid_ui_json(path: Path) -> None:
    """UI format (nodes and links, not an API prompt); links agree with both of their ends; ids are in range."""
    wf = load(path)
    assert isinstance(wf.get("nodes"), list) and isinstance(wf.get("links"), list) and wf.get("version") == 0.4
    assert not any(isinstance(v, dict) and "class_type" in v for v in wf.values()), "an API prompt, not a UI file"
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]), "duplicate node ids"
    assert wf["last_node_id"] >= max(nodes) and wf["last_link_id"] >= max((lk[0] for lk in wf["links"]), default=0)
    for node in wf["nodes"]:
        assert {"id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties",
                "widgets_values"} <= set(node), node["id"]
        assert len(node["pos"]) == 2 and len(node["size"]) == 2 and min(node["size"]) > 0
    link_ids = set()
    for link_id, src, src_slot, dst, dst_slot, type_name in wf["links"]:
        assert link_id not in link_ids
        link_ids.add(link_id)
        out = nodes[src]["outputs"][src_slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert link_id in out["links"] and inp["link"] == link_id
        assert out["type"] == inp["type"] == type_name or "*" in (out["type"], inp["type"])
    for node in wf["nodes"]:
        for inp in node["inputs"]:
            assert inp["link"] is None or inp["link"] in link_ids
        for out in node["outputs"]:
            assert set(out["links"]) <= link_ids


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_template_has_a_thumbnail(path: Path) -> None:
    """A same-name .jpg (the frontend's template dialog asks custom node packs for `<name>.jpg`), a real picture."""
    thumb = path.with_suffix(".jpg")
    assert thumb.is_file(), f"{thumb.name} is missing (python scripts/make_ui_workflow.py --thumbnails ...)"
    with Image.open(thumb) as image:
        assert image.format == "JPEG" and image.width >= 320 and image.height >= 200
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.std() > 10, "the thumbnail is (nearly) one colour"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_template_has_a_markdown_note_naming_every_model(path: Path) -> None:
    """One MarkdownNote says what the workflow does and, for each model of its loaders, the folder it goes into."""
    wf = load(path)
    notes = [n for n in wf["nodes"] if n["type"] == "MarkdownNote"]
    assert len(notes) == 1
    text = notes[0]["widgets_values"][0]
    assert text.startswith("## ") and len(text) > 200
    for node in loaders(wf):
        for model in node["properties"]["models"]:
            assert model["name"].rstrip("/") in text and f"models/{model['directory']}/" in text, model
            assert model["url"] in text, model  # the same link, for users without the download dialog


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_loaders_have_model_metadata(path: Path, comfy_server: ComfyServer, object_info: dict[str, Any]) -> None:
    """Every loader has `properties.models` in the frontend's schema (name, a valid https URL, a known model
    folder); every file or folder a loader names that this server does not have is described there."""
    wf = load(path)
    assert loaders(wf)
    folders = set(comfy_server.get("/models").json())
    api = convert(wf, object_info)
    for node in loaders(wf):
        models = node["properties"].get("models")
        assert isinstance(models, list), f"{node['type']} {node['id']} has no properties.models"
        for model in models:
            assert set(model) == MODEL_KEYS, model
            assert URL.match(model["url"]), model
            assert model["directory"] in folders, model
        definition = object_info[node["type"]]
        inputs = {**definition["input"].get("required", {}), **definition["input"].get("optional", {})}
        described = {m["name"] for m in models} | {m["name"].rstrip("/") for m in models} | {
            f"{m['directory']}/{m['name']}" for m in models}
        for name, value in api[str(node["id"])]["inputs"].items():
            options = combo_options(inputs[name])
            if isinstance(value, str) and options is not None and value not in options:  # not a preset, not here
                assert value in described, f"{node['type']} {node['id']}: {name}={value!r} is not in properties.models"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_template_layout_has_no_overlapping_nodes(path: Path) -> None:
    """Node boxes (title bars included) never overlap, and each is as tall as the generator computes its widgets."""
    wf = load(path)
    assert mui.overlapping(mui.node_boxes(wf)) == []


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_template_converts_to_its_api_graph(path: Path, object_info: dict[str, Any]) -> None:
    """Through the live server's /object_info the UI file gives the generator's API graph: the same nodes and links,
    its widget values, and the server's defaults for the widgets the graph leaves out."""
    api = convert(load(path), object_info, include_meta=False)
    want = SPECS[path.stem].api()
    assert set(api) == set(want)
    for node_id, entry in want.items():
        got = api[node_id]
        assert got["class_type"] == entry["class_type"]
        assert {k: got["inputs"].get(k) for k in entry["inputs"]} == entry["inputs"], node_id
        definition = object_info[entry["class_type"]]
        inputs = {**definition["input"].get("required", {}), **definition["input"].get("optional", {})}
        for name in set(got["inputs"]) - set(entry["inputs"]):
            assert got["inputs"][name] == mui._default(inputs[name]), (node_id, name)


def test_templates_are_served_for_the_templates_dialog(comfy_server: ComfyServer) -> None:
    """The server lists every template under the pack's name and serves its JSON and its thumbnail."""
    listed = comfy_server.get("/workflow_templates").json().get(PACK, [])
    for path in FILES:
        assert path.stem in listed
        served = comfy_server.get(f"/api/workflow_templates/{PACK}/{path.name}")
        assert served.json() == load(path)
        thumb = comfy_server.get(f"/api/workflow_templates/{PACK}/{path.stem}.jpg")
        assert thumb.content == path.with_suffix(".jpg").read_bytes()


def test_fresh_install_template_runs(comfy_server: ComfyServer, object_info: dict[str, Any]) -> None:
    """The fresh-install template needs nothing but the pack: every value is one the server offers (the demo clip in
    input/, the tiny presets) and it runs to success, writing the edit and the mask overlay."""
    (template,) = [t for t in mui.TEMPLATES if t.runs_on_fresh_install]
    wf = load(TEMPLATE_DIR / f"{template.name}.json")
    prompt = convert(wf, object_info)
    for node_id, entry in prompt.items():
        definition = object_info[entry["class_type"]]
        inputs = {**definition["input"].get("required", {}), **definition["input"].get("optional", {})}
        for name, value in entry["inputs"].items():
            options = combo_options(inputs[name])
            if options is not None:
                assert value in options, f"node {node_id} {entry['class_type']}: {name}={value!r} is not on this server"
    result = comfy_server.run(prompt, timeout=600)
    assert result.ok
    videos = [p for p in comfy_server.output_files(result.history) if p.suffix == ".mp4"]
    assert len(videos) == 2 and all(p.stat().st_size > 0 for p in videos)
    picker = next(i for i, e in prompt.items() if e["class_type"] == "EditCtrlObjectPicker")
    assert "objects: disc" in result.history["outputs"][picker]["text"][0]
    sampler = next(i for i, e in prompt.items() if e["class_type"] == "EditCtrlSampler")
    assert result.history["outputs"][sampler]["text"][0].startswith("mode ")


def test_demo_clip_is_in_the_server_input_folder(comfy_server: ComfyServer) -> None:
    """The pack wrote editctrl_demo.mp4 into the fresh server's input/ when it loaded: the clip the template reads."""
    clip = comfy_server.input_dir / "editctrl_demo.mp4"
    assert clip.is_file()
    frames, _ = read_video(clip)
    assert tuple(frames.shape) == (25, 128, 192, 3)
    assert "editctrl_demo.mp4" in comfy_server.object_info("LoadVideo")["LoadVideo"]["input"]["required"]["file"][1][
        "options"]


def _pack_module() -> Any:
    """The repository's __init__.py as a package (outside ComfyUI it registers no nodes)."""
    spec = importlib.util.spec_from_file_location("editctrl_pack_for_tests", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_demo_clip_is_written_once_and_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pack = _pack_module()
    assert pack.WEB_DIRECTORY == "./web" and (REPO / "web" / "js").is_dir()
    path = pack.write_demo_clip(str(tmp_path))
    assert path == str(tmp_path / "editctrl_demo.mp4") and not list(tmp_path.glob("*.tmp*"))
    stamp = Path(path).stat().st_mtime_ns
    assert pack.write_demo_clip(str(tmp_path)) is None and Path(path).stat().st_mtime_ns == stamp  # never rewritten
    monkeypatch.setenv("EDITCTRL_NO_DEMO_CLIP", "1")
    other = tmp_path / "other"
    other.mkdir()
    assert pack.write_demo_clip(str(other)) is None and not any(other.iterdir())
    monkeypatch.delenv("EDITCTRL_NO_DEMO_CLIP")
    assert pack.write_demo_clip(str(tmp_path / "missing")) is None  # no input folder: nothing is created
