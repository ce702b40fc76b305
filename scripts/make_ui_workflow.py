"""Write the UI-format (frontend) version of an API-format workflow, using a server's /object_info; and the templates.

The UI files under graphs/ are generated with this and checked against their API twins by the tests
(converted back through the live server's /object_info), so the two never drift.

Layout: nodes flow left to right in columns (a node sits one column right of its deepest input; a loader or other
source sits just left of its first consumer), stacked top to bottom in each column. Each node's size is computed
the way the frontend's LiteGraph `computeSize` does (slot rows, one row per widget, the DOM widgets' minimum heights,
the EditCtrl extension's own DOM widgets from web/js), so no widget hides under the next node and no two nodes
overlap; tests/test_browser.py measures the boxes in a real browser.

Templates (`--templates`): the Browse Templates dialog lists every .json in example_workflows/; TEMPLATES below
defines each one from an API graph (built from graphs/*.api.json), a MarkdownNote saying what it does and where
each model goes, and `properties.models` on its loader nodes (the frontend's model-download metadata).
`--thumbnails` screenshots each template's graph in headless Chromium (Playwright) into a same-name .jpg, the
thumbnail the dialog shows for a custom node's template; the server must then serve the frontend.

CLI::

    make_ui_workflow.py API.json UI.json --server http://127.0.0.1:PORT       # one workflow
    make_ui_workflow.py --templates [--thumbnails] --server http://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from workflow_convert import WIDGET_TYPES, fetch_object_info, widget_specs  # noqa: E402

TEMPLATE_DIR = REPO / "example_workflows"
WORKFLOW_DIR = REPO / "graphs"

# LiteGraph's metrics (LiteGraph.NODE_TITLE_HEIGHT, NODE_SLOT_HEIGHT, NODE_WIDGET_HEIGHT) and computeSize's padding
TITLE_H, SLOT_H, WIDGET_H, WIDGET_GAP, WIDGETS_PAD, BOTTOM_PAD = 30, 20, 20, 4, 8, 6
MULTILINE_H = 80  # a multiline STRING (textarea DOM widget; the frontend's minimum is 50)
# the EditCtrl extension's DOM widgets (web/js: REPORT_HEIGHT in reports.js, minHeight in picker.js/overlay_player.js)
REPORT_H, PICKER_H, PLAYER_H = 64, 240, 180
REPORT_NODES = frozenset({
    "EditCtrlSampler", "EditCtrlVAEEncode", "EditCtrlObjectPicker", "EditCtrlSAMRefine", "EditCtrlDetectObjects",
    "EditCtrlDetectionsFromJSON", "EditCtrlSelectObjects", "EditCtrlTMATokens", "EditCtrlLoraLoader",
    "EditCtrlAdapterLoader",
})
EXTRA_WIDGETS = {"EditCtrlObjectPicker": [PICKER_H], "EditCtrlMaskOverlay": [PLAYER_H]}
WIDTH, WIDE_WIDTH = 340, 420  # wide: nodes with a textarea or one of our DOM previews
GAP_X, GAP_Y, ORIGIN = 70, 40, (40, 40)
MAX_BAND_WIDTH, BAND_GAP = 2400, 80  # wider graphs wrap into bands (rows of columns), read left to right, top down
# the frontend's video preview under the widgets (LoadVideo on load, SaveVideo after a run): node width x this (4:3)
MEDIA_PREVIEW = {"LoadVideo": 3 / 4, "SaveVideo": 3 / 4}
NOTE_WIDTH = 440


def _default(spec: Any) -> Any:
    """The widget's default value from its object_info spec."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in opts:
        return opts["default"]
    if isinstance(spec[0], list):
        return spec[0][0] if spec[0] else ""
    return opts.get("options", [""])[0] if spec[0] == "COMBO" else 0


def _is_widget(spec: Any) -> bool:
    """Whether an input is shown as a widget (else it is a socket), as in workflow_convert.widget_specs."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    tname = "COMBO" if isinstance(spec[0], list) else str(spec[0])
    return tname in WIDGET_TYPES and not opts.get("forceInput") and not opts.get("rawLink")


def node_size(node_type: str, definition: dict[str, Any]) -> list[int]:
    """[width, height] of a node as the frontend computes it (body only: the title bar lies above `pos`)."""
    inputs = {**definition["input"].get("required", {}), **definition["input"].get("optional", {})}
    sockets = sum(1 for spec in inputs.values() if not _is_widget(spec))
    heights: list[int] = []
    wide = False
    for spec in widget_specs(definition):
        opts = inputs[spec["name"]][1] if len(inputs[spec["name"]]) > 1 else {}
        if spec["type"] == "STRING" and isinstance(opts, dict) and opts.get("multiline"):
            heights.append(MULTILINE_H)
            wide = True
        else:
            heights.append(WIDGET_H)
        if spec["control"]:
            heights.append(WIDGET_H)  # control_after_generate
        if spec["upload"]:
            heights.append(WIDGET_H)  # the upload button
    if node_type in REPORT_NODES:
        heights.append(REPORT_H)
    if node_type in EXTRA_WIDGETS:
        heights += EXTRA_WIDGETS[node_type]
        wide = True
    width = WIDE_WIDTH if wide else WIDTH
    if node_type in MEDIA_PREVIEW:
        heights.append(round(width * MEDIA_PREVIEW[node_type]))
    height = max(1, sockets, len(definition.get("output", []))) * SLOT_H
    if heights:
        height += sum(h + WIDGET_GAP for h in heights) + WIDGETS_PAD
    return [width, height + BOTTOM_PAD]


def layout(nodes: list[dict[str, Any]], links: list[list[Any]], origin: tuple[int, int] = ORIGIN) -> None:
    """Set each node's `pos` (sizes already set): columns left to right, stacked top to bottom, in bands of at most
    MAX_BAND_WIDTH; no two nodes overlap (the title bar, TITLE_H above `pos`, included)."""
    by_id = {n["id"]: n for n in nodes}
    preds: dict[int, set[int]] = {n["id"]: set() for n in nodes}
    succs: dict[int, set[int]] = {n["id"]: set() for n in nodes}
    for _, src, _, dst, _, _ in links:
        preds[dst].add(src)
        succs[src].add(dst)
    column: dict[int, int] = {}

    def depth(i: int) -> int:
        if i not in column:
            column[i] = 1 + max((depth(p) for p in preds[i]), default=-1)
        return column[i]

    for n in nodes:
        depth(n["id"])
    # sources (loaders, prompts) sit just left of their first consumer, not all in column 0
    for n in sorted(nodes, key=lambda n: -column[n["id"]]):
        i = n["id"]
        if not preds[i] and succs[i]:
            column[i] = max(0, min(column[s] for s in succs[i]) - 1)
    columns: dict[int, list[int]] = {}
    for n in nodes:
        columns.setdefault(column[n["id"]], []).append(n["id"])
    # columns left to right; a band of columns wider than MAX_BAND_WIDTH continues in a new band below
    x, band_top, band_bottom = origin[0], origin[1], origin[1]
    placed_y: dict[int, float] = {}
    for c in sorted(columns):
        ids = columns[c]
        width = max(by_id[i]["size"][0] for i in ids)
        if x > origin[0] and x + width - origin[0] > MAX_BAND_WIDTH:
            x, band_top = origin[0], band_bottom + BAND_GAP
        # order a column by where its inputs sit (fewer crossing links), then by id
        ids.sort(key=lambda i: (sum(placed_y[p] for p in preds[i] if p in placed_y) /
                                max(1, sum(1 for p in preds[i] if p in placed_y)) if preds[i] else -1, i))
        y = band_top
        for i in ids:
            node = by_id[i]
            node["pos"] = [x, y + TITLE_H]
            placed_y[i] = y
            y += TITLE_H + node["size"][1] + GAP_Y
        band_bottom = max(band_bottom, y - GAP_Y)
        x += width + GAP_X


def markdown_note(node_id: int, text: str, title: str = "About this workflow") -> dict[str, Any]:
    """A frontend MarkdownNote node (no server definition; ignored when converting to an API prompt)."""
    lines = sum(max(1, len(line) // 58 + 1) for line in text.splitlines())
    return {"id": node_id, "type": "MarkdownNote", "pos": [0, 0], "size": [NOTE_WIDTH, max(160, 22 + 17 * lines)],
            "flags": {}, "order": 0, "mode": 0, "inputs": [], "outputs": [], "title": title, "properties": {},
            "widgets_values": [text], "color": "#432", "bgcolor": "#653"}


def to_ui(api: dict[str, dict[str, Any]], object_info: dict[str, Any], note: str | None = None,
          models: dict[str, list[dict[str, str]]] | None = None) -> dict[str, Any]:
    """Build the frontend's workflow JSON (nodes, links, widgets_values, laid out) for an API prompt.

    `note` adds a MarkdownNote left of the graph; `models` maps node ids to their `properties.models` entries.
    """
    nodes, links = [], []
    out_links: dict[tuple[int, int], list[int]] = {}
    order = sorted(api, key=int)
    for index, node_id in enumerate(order):
        entry = api[node_id]
        definition = object_info[entry["class_type"]]
        spec_inputs = {**definition["input"].get("required", {}), **definition["input"].get("optional", {})}
        names = definition["input_order"].get("required", []) + definition["input_order"].get("optional", [])
        widgets = {w["name"]: w for w in widget_specs(definition)}
        ui_inputs, values = [], []
        for name in names:
            value = entry["inputs"].get(name)
            is_link = isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            spec = spec_inputs[name]
            type_name = "COMBO" if isinstance(spec[0], list) else spec[0]
            link_id = None
            if is_link:
                link_id = len(links) + 1
                src, slot = int(value[0]), int(value[1])
                links.append([link_id, src, slot, int(node_id), None, type_name])
                out_links.setdefault((src, slot), []).append(link_id)
            if name in widgets:
                values.append(_default(spec) if is_link or value is None else value)
                if widgets[name]["control"]:
                    values.append("fixed")
                if is_link:
                    ui_inputs.append({"name": name, "type": type_name, "widget": {"name": name}, "link": link_id})
            elif is_link or name in definition["input"].get("required", {}):
                ui_inputs.append({"name": name, "type": type_name, "link": link_id})
            else:
                ui_inputs.append({"name": name, "type": type_name, "link": None})
            if link_id is not None:
                links[-1][4] = len(ui_inputs) - 1
        properties: dict[str, Any] = {"Node name for S&R": entry["class_type"]}
        if models is not None and node_id in models:
            properties["models"] = copy.deepcopy(models[node_id])
        nodes.append({
            "id": int(node_id), "type": entry["class_type"],
            "pos": [0, 0], "size": node_size(entry["class_type"], definition),
            "flags": {}, "order": index, "mode": 0, "inputs": ui_inputs,
            "outputs": [], "properties": properties, "widgets_values": values,
        })
        if entry.get("_meta", {}).get("title"):
            nodes[-1]["title"] = entry["_meta"]["title"]
    for node in nodes:
        definition = object_info[node["type"]]
        for slot, (otype, oname) in enumerate(zip(definition["output"], definition["output_name"])):
            node["outputs"].append({"name": oname, "type": otype, "links": out_links.get((node["id"], slot), []),
                                    "slot_index": slot})
    origin = ORIGIN
    last_id = max(n["id"] for n in nodes)
    if note is not None:
        last_id += 1
        md = markdown_note(last_id, note)
        md["pos"] = [ORIGIN[0], ORIGIN[1] + TITLE_H]
        md["order"] = len(nodes)
        origin = (ORIGIN[0] + md["size"][0] + GAP_X, ORIGIN[1])
    layout(nodes, links, origin)
    if note is not None:
        nodes.append(md)
    return {"last_node_id": last_id, "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.7, "offset": [0, 0]}},
            "version": 0.4}


# ---- templates ---------------------------------------------------------------------------------------------------

LTX_CHECKPOINT = {"name": "ltx-2-19b-dev-fp8.safetensors", "directory": "checkpoints",
                  "url": "https://huggingface.co/Lightricks/LTX-2/resolve/main/ltx-2-19b-dev-fp8.safetensors"}
GEMMA = {"name": "gemma_3_12B_it.safetensors", "directory": "text_encoders",
         "url": "https://huggingface.co/Comfy-Org/ltx-2/resolve/main/split_files/text_encoders/gemma_3_12B_it.safetensors"}
# Folder models (transformers layout) are named with a trailing "/": the frontend's missing-model check compares file
# names with the widget value, so it skips them instead of always reporting a folder as a missing file.
QWEN = {"name": "Qwen2.5-VL-7B-Instruct/", "directory": "LLM", "url": "https://huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct"}
SAM2 = {"name": "sam2.1-hiera-large/", "directory": "sams", "url": "https://huggingface.co/facebook/sam2.1-hiera-large"}
#: the disc of the demo clip on its first frame, as picked on the Object Picker (frame pixels of the 192x128 clip)
DEMO_PICKS = json.dumps({"width": 192, "height": 128, "picks": [{"label": "disc", "box": [44, 34, 100, 90]}]})


@dataclass
class Template:
    """One example_workflows/ template: its API graph, note, and loader model metadata (by node id)."""

    name: str
    build: Callable[[], dict[str, dict[str, Any]]]
    note: str
    models: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    runs_on_fresh_install: bool = False

    def api(self) -> dict[str, dict[str, Any]]:
        """The template's API prompt (what converting its UI file through /object_info must give)."""
        return self.build()


def _api(name: str) -> dict[str, dict[str, Any]]:
    return json.loads((WORKFLOW_DIR / f"{name}.api.json").read_text(encoding="utf-8"))


def _link(node: str, slot: int = 0) -> list[Any]:
    return [node, slot]


def tiny_picker_api() -> dict[str, dict[str, Any]]:
    """graphs/editctrl_demo.api.json with its rectangle mask replaced by Object Picker → SAM Refine (tiny SAM2)."""
    api = _api("editctrl_demo")
    api.pop("7")  # EditCtrlRectMask
    api["17"] = {"class_type": "EditCtrlObjectPicker",
                 "inputs": {"images": _link("2"), "keyframe": 0, "picks": DEMO_PICKS, "label": "disc",
                            "point_size": 32}}
    api["18"] = {"class_type": "EditCtrlSAMLoader",
                 "inputs": {"model": "tiny-sam2_video", "mode": "auto", "dtype": "auto", "device": "auto",
                            "offload_after_use": True}}
    api["19"] = {"class_type": "EditCtrlSAMRefine",
                 "inputs": {"images": _link("2"), "detections": _link("17"), "select_by": "all", "selection": "",
                            "sam": _link("18"), "clip_to_box": True, "box_margin": 0.1, "threshold": 0.0}}
    api["8"]["inputs"]["mask"] = _link("19")
    api["13"]["inputs"]["filename_prefix"] = "editctrl/picker_edit"
    api["16"]["inputs"]["filename_prefix"] = "editctrl/picker_mask_overlay"
    return api


def _real_models(api: dict[str, dict[str, Any]], text_node: str, prompts: tuple[str, str]) -> None:
    """Swap the tiny model loader and text encoder for LTX-2 19B (fp8) and Gemma-3 12B (in place)."""
    api["3"]["inputs"].update(preset="auto", weights=f"checkpoints/{LTX_CHECKPOINT['name']}")
    api["4"] = {"class_type": "EditCtrlLTXTextEncoderLoader",
                "inputs": {"text_encoder": GEMMA["name"], "connectors": f"checkpoints/{LTX_CHECKPOINT['name']}",
                           "tokenizer": "(from text encoder)", "preset": "auto", "device": "auto", "dtype": "auto",
                           "offload_after_encode": True, "max_length": 0}}
    api[text_node] = {"class_type": "EditCtrlTextEncode",
                      "inputs": {"text_encoder": _link("4"), "text": prompts[0], "negative": prompts[1]}}


def ltx2_picker_api() -> dict[str, dict[str, Any]]:
    """The tiny picker template on the real models: LTX-2 19B, Gemma-3 12B, SAM2.1."""
    api = tiny_picker_api()
    _real_models(api, "5", ("the empty street, nothing in the way",
                            "blurry, distorted, artifacts, the removed object, its shadow"))
    api.pop("6")
    api["9"]["inputs"].update(positive=_link("5", 0), negative=_link("5", 1), steps=30, cfg=3.0)
    api["17"]["inputs"].update(picks="[]", label="object")
    api["18"]["inputs"]["model"] = SAM2["name"].rstrip("/")
    api["19"]["inputs"]["threshold"] = 0.0
    api["13"]["inputs"]["filename_prefix"] = "editctrl/ltx2_picker_edit"
    api["16"]["inputs"]["filename_prefix"] = "editctrl/ltx2_picker_mask_overlay"
    return api


def ltx2_detect_api() -> dict[str, dict[str, Any]]:
    """graphs/detect_sam_edit.api.json on the real models: Qwen2.5-VL-7B detects, SAM2.1 segments, LTX-2 edits."""
    api = _api("detect_sam_edit")
    _real_models(api, "5", ("the empty table, nothing on it", "blurry, distorted, artifacts, a cup"))
    api.pop("6")
    api["15"]["inputs"].update(positive=_link("13"), negative=_link("5", 1), steps=30, cfg=3.0)
    api["13"]["inputs"].update(conditioning=_link("5", 0), caption="the empty table, nothing on it")
    api.pop("7")  # typed boxes: Qwen-VL detects instead
    api["7"] = {"class_type": "EditCtrlDetectObjects",
                "inputs": {"qwen": _link("12"), "images": _link("2"), "prompt_mode": "categories", "categories": "cup",
                           "text": "", "keyframe_count": 3, "keyframe_indices": "", "max_new_tokens": 512,
                           "on_parse_error": "skip keyframe"}}
    api["8"]["inputs"].update(selection="cup")
    api["10"]["inputs"].update(selection="cup")
    api["9"]["inputs"]["model"] = SAM2["name"].rstrip("/")
    api["12"]["inputs"]["model"] = QWEN["name"].rstrip("/")
    api["19"]["inputs"]["filename_prefix"] = "editctrl/ltx2_detect_edit"
    api["22"]["inputs"]["filename_prefix"] = "editctrl/ltx2_detect_mask_overlay"
    return api


MODEL_PLACES = """\
| model | file or folder | put it in |
| --- | --- | --- |
| LTX-2 19B (fp8) | [ltx-2-19b-dev-fp8.safetensors]({ltx}) | `models/checkpoints/` |
| Gemma-3 12B text encoder | [gemma_3_12B_it.safetensors]({gemma}) | `models/text_encoders/` |
{extra}""".format  # noqa: UP032 - filled per template

TEMPLATES = [
    Template(
        "editctrl_tiny_picker_edit", tiny_picker_api, runs_on_fresh_install=True,
        note="""## EditCtrl: pick an object, edit it (tiny demo)

Runs as it is on a fresh install, on the CPU in seconds: press **Run**.

- **Load Video** reads `editctrl_demo.mp4`, which the pack writes into ComfyUI's `input/` folder on first start.
- **Object Picker** shows the keyframe after a run: **drag** a box or **click** a point on it to pick an object
  (the picks are saved as JSON in the node, so the workflow also runs headless). The disc is already picked.
- **SAM Refine** turns the box into a silhouette; **Encode → Edit Sampler → Decode → Composite** regenerate only the
  masked region; **Mask Overlay** plays the edit region in red on the node.

**Models:** none to download. Every loader uses a built-in *tiny* preset with seeded weights (`(preset weights)`,
`tiny`, `tiny-sam2_video`): a plumbing check that paints the region flat grey, not a real edit. For real edits open
the *editctrl_ltx2_picker_edit* template.
""",
        models={"3": [], "4": [], "18": []},
    ),
    Template(
        "editctrl_ltx2_picker_edit", ltx2_picker_api,
        note="""## EditCtrl: pick an object, remove or replace it (LTX-2 19B)

1. Load your clip in **Load Video** (any length and size: the encoder pads to LTX-2's grid and crops back).
2. Press **Run** once: the **Object Picker** shows the keyframe. **Drag** a box around the object (or **click** it),
   then **Run** again. The mask overlay plays on its node; the edit is saved under `output/editctrl/`.
3. Describe the *result* in the positive prompt (what the region should show), not an instruction.

**Models** (a 24 GB+ GPU; `mode` auto runs training-free without an SCD LoRA):

""" + MODEL_PLACES(ltx=LTX_CHECKPOINT["url"], gemma=GEMMA["url"], extra=(
            f"| SAM 2.1 large (transformers folder) | [facebook/sam2.1-hiera-large]({SAM2['url']}) | "
            "`models/sams/sam2.1-hiera-large/` |\n")),
        models={"3": [LTX_CHECKPOINT], "4": [GEMMA, LTX_CHECKPOINT], "18": [SAM2]},
    ),
    Template(
        "editctrl_ltx2_detect_sam_edit", ltx2_detect_api,
        note="""## EditCtrl: detect objects by name, edit them (Qwen2.5-VL + SAM 2.1 + LTX-2 19B)

**Detect Objects** asks Qwen2.5-VL for the `categories` on three keyframes; **Select Objects** / **SAM Refine**
pick them by label and turn the boxes into silhouettes propagated over the clip; **TMA Tokens** add Qwen-VL semantic
tokens to the prompt; **Mask Ops** intersects and grows the mask; the sampler regenerates only that region.
Change `categories`/`selection` to the object you want, describe the result in the prompt, press **Run**.

**Models:**

""" + MODEL_PLACES(ltx=LTX_CHECKPOINT["url"], gemma=GEMMA["url"], extra=(
            f"| Qwen2.5-VL 7B Instruct (transformers folder) | [Qwen/Qwen2.5-VL-7B-Instruct]({QWEN['url']}) | "
            "`models/LLM/Qwen2.5-VL-7B-Instruct/` |\n"
            f"| SAM 2.1 large (transformers folder) | [facebook/sam2.1-hiera-large]({SAM2['url']}) | "
            "`models/sams/sam2.1-hiera-large/` |\n")) + """
The TMA connector is `fresh` (untrained) here: train one with `python -m training.train` and pick it from
`models/editctrl/`, or delete the TMA node and connect the prompt straight to the sampler.
""",
        models={"3": [LTX_CHECKPOINT], "4": [GEMMA, LTX_CHECKPOINT], "9": [SAM2], "12": [QWEN]},
    ),
]


def build_template(template: Template, object_info: dict[str, Any]) -> dict[str, Any]:
    """The UI workflow of a template (laid out, with its note and model metadata)."""
    return to_ui(template.api(), object_info, note=template.note, models=template.models)


def write_templates(object_info: dict[str, Any], out_dir: Path = TEMPLATE_DIR) -> list[Path]:
    """Write every template's UI JSON into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for template in TEMPLATES:
        path = out_dir / f"{template.name}.json"
        path.write_text(json.dumps(build_template(template, object_info), indent=1) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


# ---- thumbnails (headless Chromium with the real frontend) ------------------------------------------------------

CHROMIUM = os.environ.get("EDITCTRL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
THUMBNAIL_SIZE = (768, 480)
THUMBNAIL_PAD = (80, 30, 80, 160)  # left, right, bottom, top: clear of the side bar, the Run bar and its toasts


def launch_chromium(playwright: Any, profile: Path, viewport: tuple[int, int] = (1600, 1000)) -> Any:
    """A headless Chromium context (/usr/bin/chromium, no `playwright install`) with its own profile; HOME and the
    XDG folders point into the profile's parent, where Chromium writes."""
    scratch = Path(profile).parent
    env = {**os.environ, "HOME": str(scratch / "home"), "XDG_CONFIG_HOME": str(scratch / "xdg-config"),
           "XDG_CACHE_HOME": str(scratch / "xdg-cache"), "XDG_DATA_HOME": str(scratch / "xdg-data")}
    for key in ("HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    return playwright.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, env=env,
        viewport={"width": viewport[0], "height": viewport[1]})


def open_app(context: Any, url: str) -> Any:
    """A new page on the ComfyUI frontend at `url`, once the app, its graph and canvas are up."""
    page = context.new_page()
    page.goto(url)
    page.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=90_000)
    return page


def open_frontend(playwright: Any, url: str, profile: Path, viewport: tuple[int, int] = (1600, 1000)) -> tuple[Any, Any]:
    """(context, page) of headless Chromium on the ComfyUI frontend at `url`."""
    context = launch_chromium(playwright, profile, viewport)
    return context, open_app(context, url)


def load_workflow(page: Any, workflow: dict[str, Any], name: str = "workflow") -> list[float]:
    """Load a UI workflow into the page (no missing-model/node dialogs), then fit the whole graph into the view."""
    page.evaluate("""async ([wf, name]) => {
        await app.loadGraphData(wf, true, false, name, {showMissingModelsDialog: false, showMissingNodesDialog: false});
    }""", [workflow, name])
    page.wait_for_timeout(600)  # the frontend settles the view and the DOM widgets after loading
    return fit_view(page)


def fit_view(page: Any, pad: tuple[int, int, int, int] = (80, 30, 80, 100)) -> list[float]:
    """Zoom and pan the canvas so every node (title bars included) is in view, clear of the frontend's side bar and
    top bar (`pad`: left, right, bottom, top pixels); the graph's rectangle on the page [x, y, width, height]."""
    rect = page.evaluate("""([left, right, bottom, top]) => {
        let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
        for (const n of app.graph._nodes) {
            x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT);
            x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
        }
        const el = app.canvas.canvas, w = el.clientWidth - left - right, h = el.clientHeight - top - bottom;
        const scale = Math.min(w / (x1 - x0), h / (y1 - y0), 1);
        const ds = app.canvas.ds;
        ds.scale = scale;
        ds.offset[0] = (left + (w - (x1 - x0) * scale) / 2) / scale - x0;
        ds.offset[1] = (top + (h - (y1 - y0) * scale) / 2) / scale - y0;
        app.canvas.setDirty(true, true);
        const r = el.getBoundingClientRect();
        return [r.left + (x0 + ds.offset[0]) * scale, r.top + (y0 + ds.offset[1]) * scale, (x1 - x0) * scale,
                (y1 - y0) * scale];
    }""", list(pad))
    page.wait_for_timeout(400)
    return rect


def run_in_page(page: Any, timeout_s: float = 600) -> dict[str, Any]:
    """Press the frontend's Run button and wait until the prompt it queued has finished; its /history entry."""
    before = page.evaluate("async () => Object.keys(await (await fetch('/api/history')).json())")
    page.locator('[data-testid="queue-button"]').first.click()
    entry = page.evaluate("""async ([before, timeout]) => {
        const end = Date.now() + timeout;
        while (Date.now() < end) {
            const history = await (await fetch('/api/history')).json();
            const done = Object.entries(history).find(([id, e]) => !before.includes(id) && e.status?.completed !== undefined);
            if (done) return done[1];
            await new Promise(r => setTimeout(r, 500));
        }
        return null;
    }""", [before, timeout_s * 1000])
    if entry is None:
        raise TimeoutError(f"the prompt queued from the page did not finish in {timeout_s:.0f} s")
    page.wait_for_timeout(1500)  # previews load, nodes grow
    return entry


def node_boxes(workflow: dict[str, Any]) -> dict[int, tuple[float, float, float, float]]:
    """Each node's box (x, y, width, height) as the canvas draws it: the title bar above `pos` included."""
    return {n["id"]: (n["pos"][0], n["pos"][1] - TITLE_H, n["size"][0], n["size"][1] + TITLE_H)
            for n in workflow["nodes"]}


def overlapping(boxes: dict[Any, tuple[float, float, float, float]]) -> list[tuple[Any, Any]]:
    """Pairs of boxes (x, y, width, height) that overlap (touching edges do not count)."""
    items = sorted(boxes.items(), key=lambda kv: kv[1][0])
    pairs = []
    for i, (a, (ax, ay, aw, ah)) in enumerate(items):
        for b, (bx, by, bw, bh) in items[i + 1:]:
            if bx >= ax + aw:
                break
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                pairs.append((a, b))
    return pairs


#: display settings for screenshots: no minimap over the graph, full-detail nodes at any zoom
SCREENSHOT_SETTINGS = {"Comfy.Minimap.Visible": False, "LiteGraph.Canvas.MinFontSizeForLOD": 0,
                       "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0}


def apply_settings(page: Any, settings: dict[str, Any]) -> None:
    """Set frontend settings through the app (they are saved for the server's user)."""
    page.evaluate("""async (settings) => {
        for (const [id, value] of Object.entries(settings)) await app.extensionManager.setting.set(id, value);
    }""", settings)


def graph_picture(page: Any, rect: list[float], path: Path, size: tuple[int, int] = THUMBNAIL_SIZE) -> Path:
    """The graph's rectangle of the page, scaled into `size` on the canvas colour, as a JPEG."""
    from PIL import Image

    shot = path.with_suffix(".png")
    page.screenshot(path=str(shot))
    image = Image.open(shot).convert("RGB")
    shot.unlink()
    x, y, w, h = rect
    scale = image.width / page.viewport_size["width"]  # device pixels per CSS pixel
    pad = 8
    box = (max(0, int((x - pad) * scale)), max(0, int((y - pad) * scale)),
           min(image.width, int((x + w + pad) * scale)), min(image.height, int((y + h + pad) * scale)))
    graph = image.crop(box)
    graph.thumbnail(size, Image.LANCZOS)
    canvas = Image.new("RGB", size, image.getpixel((box[0], box[1])))
    canvas.paste(graph, ((size[0] - graph.width) // 2, (size[1] - graph.height) // 2))
    canvas.save(path, "JPEG", quality=85)
    return path


def write_thumbnails(server_url: str, out_dir: Path = TEMPLATE_DIR, profile: Path | None = None) -> list[Path]:
    """Screenshot each template's graph in the real frontend into `<name>.jpg` (the Browse Templates thumbnail).

    Meant for a scratch server: it turns the minimap off and full-detail rendering on for the server's user.
    """
    import tempfile

    from playwright.sync_api import sync_playwright

    paths = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        context, page = open_frontend(p, server_url, profile or Path(tmp) / "profile", viewport=(1800, 1200))
        try:
            apply_settings(page, SCREENSHOT_SETTINGS)
            for template in TEMPLATES:
                workflow = json.loads((out_dir / f"{template.name}.json").read_text(encoding="utf-8"))
                load_workflow(page, workflow, template.name)
                if template.runs_on_fresh_install:  # show it after a run: the keyframe, the overlay, the videos
                    run_in_page(page)
                rect = fit_view(page, THUMBNAIL_PAD)
                paths.append(graph_picture(page, rect, out_dir / f"{template.name}.jpg"))
        finally:
            context.close()
    return paths


def main() -> None:
    """CLI: make_ui_workflow.py API.json UI.json --server URL, or --templates [--thumbnails] --server URL."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("api", type=Path, nargs="?")
    parser.add_argument("ui", type=Path, nargs="?")
    parser.add_argument("--server", required=True)
    parser.add_argument("--templates", action="store_true", help="write example_workflows/*.json")
    parser.add_argument("--thumbnails", action="store_true",
                        help="screenshot each template into a same-name .jpg (needs the frontend and Chromium)")
    args = parser.parse_args()
    if args.templates or args.thumbnails:
        if args.templates:
            for path in write_templates(fetch_object_info(args.server)):
                print(path)
        if args.thumbnails:
            for path in write_thumbnails(args.server):
                print(path)
        return
    if args.api is None or args.ui is None:
        parser.error("give API.json and UI.json, or --templates")
    api = json.loads(args.api.read_text())
    args.ui.write_text(json.dumps(to_ui(api, fetch_object_info(args.server)), indent=1) + "\n")
    print(args.ui)


if __name__ == "__main__":
    main()
