"""The web extension in real headless Chromium on the real ComfyUI frontend, and the Object Picker node it drives.

A ComfyUI server (tests/comfy_server.py, one per ComfyUI version as in conftest.py) serves the frontend of its own
venv (`comfyui-frontend-package`: 1.32.9 beside ComfyUI 0.3.75, 1.35.9 beside 0.8.0) through `--front-end-root`.
Chromium (/usr/bin/chromium, driven by Playwright for Python) opens it, loads workflows, drags and clicks on the
picker's keyframe preview, presses Run, and the results are read back from the server (/history, output files).
Every template in example_workflows/ is loaded and its node boxes measured on the page (no two overlap, every node
is tall enough for its widgets, every DOM widget lies inside its node).

The browser tests skip, saying why, when Playwright, /usr/bin/chromium or the frontend package is missing.  The
headless picker tests at the end need only the server.  Screenshots go to $EDITCTRL_SCREENSHOTS (default: a pytest
tmp folder, printed).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import conftest
import numpy as np
import pytest
from comfy_server import ComfyServer
from PIL import Image

from editctrl_core.perception.detection import Detections
from editctrl_core.perception.object_masks import union_box_mask

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import make_ui_workflow as mui  # noqa: E402

TEMPLATES = sorted((REPO / "example_workflows").glob("*.json"))
CLIP_FRAMES, CLIP_H, CLIP_W = 25, 128, 192  # the demo clip the pack writes into input/ (editctrl_demo.mp4)
POINT_SIZE = 32
UI_KEY = "editctrl_picker"  # the picker's UI output: its keyframe PNG and the frame geometry
#: the picker's own mini graph: demo clip → picker → SAM Refine without SAM (box masks) → saved mask + overlay
PICKER_API: dict[str, dict[str, Any]] = {
    "1": {"class_type": "LoadVideo", "inputs": {"file": "editctrl_demo.mp4"}},
    "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
    "3": {"class_type": "EditCtrlObjectPicker",
          "inputs": {"images": ["2", 0], "keyframe": 0, "picks": "[]", "label": "object", "point_size": POINT_SIZE}},
    "4": {"class_type": "EditCtrlSAMRefine",
          "inputs": {"images": ["2", 0], "detections": ["3", 0], "select_by": "all", "selection": "",
                     "clip_to_box": True, "box_margin": 0.1, "threshold": 0.0}},
    "5": {"class_type": "MaskToImage", "inputs": {"mask": ["4", 0]}},
    "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "editctrl_browser/mask"}},
    "7": {"class_type": "EditCtrlMaskOverlay", "inputs": {"images": ["2", 0], "mask": ["4", 0], "opacity": 0.5}},
}


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if importlib.util.find_spec("playwright") is None:
        return "Playwright for Python is not installed (pip install playwright==1.65.2; no `playwright install`)"
    if not Path(mui.CHROMIUM).is_file():
        return f"no Chromium at {mui.CHROMIUM} (apt-get install -y chromium)"
    return None


needs_browser = pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")


def frontend_root(python: str) -> Path | None:
    """The static folder of `comfyui_frontend_package` in the venv of `python`, or None when it is not installed."""
    code = "import comfyui_frontend_package as f, os; print(os.path.join(os.path.dirname(f.__file__), 'static'))"
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    root = Path(done.stdout.strip()) if done.returncode == 0 else None
    return root if root is not None and (root / "index.html").is_file() else None


@pytest.fixture(scope="module", params=conftest.SELECTED_VERSIONS, ids=[f"comfy-{v}" for v in conftest.SELECTED_VERSIONS])
def frontend_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """A ComfyUI server that serves the real frontend (its venv's comfyui-frontend-package) with this pack's web/."""
    missing = browser_missing()
    if missing:
        pytest.skip(missing)
    inst = conftest.comfy_install(request.param)
    if inst.skip_reason:
        pytest.skip(inst.skip_reason)
    assert inst.comfy_dir is not None and inst.python is not None
    root = frontend_root(inst.python)
    if root is None:
        pytest.skip(f"the frontend is missing: {inst.python} cannot import comfyui_frontend_package (ComfyUI "
                    f"{inst.version}'s requirements.txt pins it; scripts/setup.sh installs it)")
    base = tmp_path_factory.mktemp(f"browser_server-{inst.version}")
    # no first-run templates dialog, no minimap, no workflows restored from an earlier page (their dialogs)
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True, "Comfy.Workflow.Persist": False,
                                    **mui.SCREENSHOT_SETTINGS}), encoding="utf-8")
    server = ComfyServer(base, inst.comfy_dir, python=inst.python, extra_args=["--front-end-root", str(root)])
    with server:
        yield server


@pytest.fixture(scope="module")
def browser(frontend_server: ComfyServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium context with a fresh profile (and scratch HOME/XDG folders)."""
    from playwright.sync_api import sync_playwright

    scratch = tmp_path_factory.mktemp("chromium")
    with sync_playwright() as p:
        context = mui.launch_chromium(p, scratch / "profile")
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: Any, frontend_server: ComfyServer) -> Iterator[Any]:
    """A fresh page on the frontend; fails the test if the page reports an error from this pack's scripts."""
    errors: list[str] = []
    opened = mui.open_app(browser, frontend_server.url)
    opened.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    opened.on("console", lambda m: errors.append(f"console {m.type}: {m.text} ({m.location.get('url', '')})")
              if m.type == "error" and "ComfyUI-EditCtrl" in m.location.get("url", "") else None)
    assert opened.evaluate("() => app.extensions.map(e => e.name).filter(n => n.startsWith('EditCtrl.')).sort()") == [
        "EditCtrl.MaskOverlayPlayer", "EditCtrl.ObjectPicker", "EditCtrl.Reports"]
    try:
        yield opened
    finally:
        opened.close()
    ours = [e for e in errors if "editctrl" in e.lower()]
    assert not ours, ours


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory, frontend_server: ComfyServer) -> Path:
    """The screenshot folder ($EDITCTRL_SCREENSHOTS/<version>, else a tmp folder); printed."""
    root = Path(os.environ["EDITCTRL_SCREENSHOTS"]) if os.environ.get("EDITCTRL_SCREENSHOTS") else \
        tmp_path_factory.mktemp("screenshots")
    folder = root / f"comfy-{frontend_server.version}"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {folder}")
    return folder


def shoot(page: Any, shots: Path, name: str) -> Path:
    path = shots / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def load(page: Any, workflow: dict[str, Any], name: str) -> None:
    mui.load_workflow(page, workflow, name)


def run_from_ui(page: Any, server: ComfyServer, timeout: float = 240.0) -> tuple[str, dict[str, Any]]:
    """Press the frontend's Run button; wait for the prompt it queued to finish; its id and /history entry."""
    before = set(server.get("/history").json())
    page.locator('[data-testid="queue-button"]').first.click()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = server.get("/history").json()
        done = [pid for pid, e in history.items()
                if pid not in before and e.get("status", {}).get("completed") is not None]
        if done:
            page.wait_for_timeout(700)  # the last ws messages reach the page
            return done[0], history[done[0]]
        time.sleep(0.5)
    raise TimeoutError(f"the prompt queued from the UI did not finish in {timeout:.0f} s; log:\n{server.log_tail()}")


def errors_of(entry: dict[str, Any]) -> list[str]:
    return [m[1].get("exception_message", "") for m in entry["status"]["messages"] if m[0] == "execution_error"]


def widget_value(page: Any, node_id: int, name: str) -> Any:
    return page.evaluate("([id, name]) => app.graph.getNodeById(id).widgets.find(w => w.name === name).value",
                         [node_id, name])


def to_screen(page: Any, selector: str, frame_xy: tuple[float, float], size: tuple[int, int]) -> tuple[float, float]:
    """The page position of frame pixel `frame_xy` on the picker stage (the frame fitted into it, centred)."""
    box = page.locator(selector).bounding_box()
    scale = min(box["width"] / size[0], box["height"] / size[1])
    ox = (box["width"] - size[0] * scale) / 2
    oy = (box["height"] - size[1] * scale) / 2
    return box["x"] + ox + frame_xy[0] * scale, box["y"] + oy + frame_xy[1] * scale


def measure(page: Any) -> list[dict[str, Any]]:
    """Every node's box on the graph, the size its widgets need, and its DOM widgets' rectangles against its own."""
    return page.evaluate("""() => {
        const ds = app.canvas.ds, r = app.canvas.canvas.getBoundingClientRect(), T = LiteGraph.NODE_TITLE_HEIGHT;
        return app.graph._nodes.map(n => {
            const screen = [r.left + (n.pos[0] + ds.offset[0]) * ds.scale, r.top + (n.pos[1] - T + ds.offset[1]) * ds.scale,
                            n.size[0] * ds.scale, (n.size[1] + T) * ds.scale];
            const dom = (n.widgets || []).filter(w => w.element && w.element.isConnected && w.element.offsetParent)
                .map(w => { const b = w.element.getBoundingClientRect(); return {name: w.name, rect: [b.left, b.top, b.width, b.height]}; });
            return {id: n.id, type: n.type, box: [n.pos[0], n.pos[1] - T, n.size[0], n.size[1] + T], size: [...n.size],
                    need: n.computeSize(), screen, dom,
                    media: (n.widgets || []).some(w => w.name === 'video-preview' || w.type === 'video')};
        });
    }""")


def check_layout(nodes: list[dict[str, Any]]) -> list[str]:
    """Problems: overlapping nodes, nodes too short for their widgets, DOM widgets outside their node."""
    problems = [f"nodes {a} and {b} overlap" for a, b in
                mui.overlapping({f"{n['id']} {n['type']}": tuple(n["box"]) for n in nodes})]
    for n in nodes:
        if n["size"][1] + 0.5 < n["need"][1]:
            problems.append(f"{n['id']} {n['type']} is {n['size'][1]:.0f} px tall, its widgets need {n['need'][1]:.0f}")
        # the frontend's video preview asks for more width than any node has (its minimum is the node's own width
        # plus the widget margins), so width is checked on the other nodes only
        if not n["media"] and n["size"][0] + 0.5 < n["need"][0]:
            problems.append(f"{n['id']} {n['type']} is {n['size'][0]:.0f} px wide, its widgets need {n['need'][0]:.0f}")
        x, y, w, h = n["screen"]
        for d in n["dom"]:
            dx, dy, dw, dh = d["rect"]
            if dw and dh and (dx < x - 2 or dy < y - 2 or dx + dw > x + w + 2 or dy + dh > y + h + 2):
                problems.append(f"{n['id']} {n['type']}: DOM widget {d['name']} {[round(v) for v in d['rect']]} lies "
                                f"outside its node {[round(v) for v in n['screen']]}")
    return problems


def saved_mask(server: ComfyServer, entry: dict[str, Any], node: str) -> np.ndarray:
    """The frames a SaveImage node wrote, as one [F,H,W] array of 0..255 (the red channel of MaskToImage)."""
    images = entry["outputs"][node]["images"]
    return np.stack([np.asarray(Image.open(io.BytesIO(server.view(i["filename"], i["subfolder"], i["type"]))))[..., 0]
                     for i in images])


def expected_mask(picks: dict[str, Any], point_size: int = POINT_SIZE) -> np.ndarray:
    """The box-mask union the picker + SAM Refine (no SAM) must produce for these picks, by the core's own code."""
    sx, sy = CLIP_W / picks.get("width", CLIP_W), CLIP_H / picks.get("height", CLIP_H)
    dets = []
    for p in picks["picks"]:
        if "box" in p:
            x1, y1, x2, y2 = p["box"]
            box = [x1 * sx, y1 * sy, x2 * sx, y2 * sy]
        else:
            x, y = p["point"][0] * sx, p["point"][1] * sy
            box = [x - point_size / 2, y - point_size / 2, x + point_size / 2, y + point_size / 2]
        box = [min(max(box[0], 0), CLIP_W), min(max(box[1], 0), CLIP_H), min(max(box[2], 0), CLIP_W),
               min(max(box[3], 0), CLIP_H)]
        dets.append({"label": p.get("label", "object"), "box": box, "score": None})
    detections = Detections.from_dict({"width": CLIP_W, "height": CLIP_H, "num_frames": CLIP_FRAMES,
                                       "frames": {"0": dets}})
    return (union_box_mask(detections, CLIP_FRAMES, CLIP_H, CLIP_W).numpy() * 255).round().astype(np.uint8)


# ---- the browser ---------------------------------------------------------------------------------------------


@needs_browser
def test_picker_drag_and_click_reach_sam_refine(page: Any, frontend_server: ComfyServer, shots: Path) -> None:
    """Run with nothing picked (the keyframe appears on the node), drag a box and click a point on it, run again from
    the Run button: the prompt carries the widget's JSON and the saved mask is exactly those boxes."""
    server = frontend_server
    load(page, mui.to_ui(PICKER_API, server.object_info()), "picker")
    stage = '[data-editctrl="picker-stage"]'
    assert page.locator(stage).is_visible()
    assert widget_value(page, 3, "picks") == "[]"
    shoot(page, shots, "picker-1-loaded")

    # 1. nothing picked: the node stops with a message, but its keyframe reaches the preview on the node
    _, entry = run_from_ui(page, server)
    assert entry["status"]["status_str"] == "error"
    assert any("nothing is picked yet" in e for e in errors_of(entry)), errors_of(entry)
    page.keyboard.press("Escape")  # the frontend's error dialog
    page.wait_for_function("() => !!document.querySelector('[data-editctrl=\"picker-stage\"] image').getAttribute('href')")
    href = page.locator(f"{stage} image").get_attribute("href")
    assert "type=temp" in href and href.startswith("/") and page.evaluate(
        "async (u) => (await fetch(u)).status", href) == 200
    assert "keyframe 0 of 25 (192×128)" in page.locator('[data-editctrl="picker-status"]').inner_text()
    assert "nothing is picked yet" in page.locator('[data-editctrl="report"]').first.inner_text()
    shoot(page, shots, "picker-2-keyframe-shown")

    # 2. drag a box, click a point
    start, end, point = (40, 30), (140, 110), (160, 60)
    page.mouse.move(*to_screen(page, stage, start, (CLIP_W, CLIP_H)))
    page.mouse.down()
    page.mouse.move(*to_screen(page, stage, end, (CLIP_W, CLIP_H)), steps=8)
    page.mouse.up()
    page.mouse.click(*to_screen(page, stage, point, (CLIP_W, CLIP_H)))
    text = widget_value(page, 3, "picks")
    picks = json.loads(text)
    assert (picks["width"], picks["height"]) == (CLIP_W, CLIP_H)
    (box, pt) = picks["picks"]
    assert box["label"] == pt["label"] == "object"
    assert np.allclose(box["box"], [*start, *end], atol=1.01), box
    assert np.allclose(pt["point"], point, atol=1.01), pt
    assert page.locator(f"{stage} [data-pick] rect").count() == 1 and page.locator(f"{stage} [data-pick] circle").count() == 1
    # the workflow as the frontend saves it holds the picks in the widget; the DOM widgets add no values
    saved = page.evaluate("() => app.graph.getNodeById(3).serialize().widgets_values")
    assert saved == [0, text, "object", POINT_SIZE]
    shoot(page, shots, "picker-3-picked")

    # 3. run from the Run button: the UI's prompt carries the JSON; SAM Refine (box masks) gets exactly these boxes
    _, entry = run_from_ui(page, server)
    assert entry["status"]["status_str"] == "success", errors_of(entry)
    sent = entry["prompt"][2]
    assert sent["3"]["inputs"]["picks"] == text
    assert not [k for node in sent.values() for k in node["inputs"] if k.startswith("editctrl")]
    mask = saved_mask(server, entry, "6")
    assert mask.shape == (CLIP_FRAMES, CLIP_H, CLIP_W)
    assert np.array_equal(mask, expected_mask(picks))
    report = entry["outputs"]["3"]["text"][0]
    assert "objects: object#1, object#2" in report
    assert page.locator('[data-editctrl="report"]').first.inner_text() == report
    assert "detection boxes as masks" in entry["outputs"]["4"]["text"][0]  # SAM Refine says so (no SAM connected)
    # the overlay node's player holds the frames the node sent
    sent_frames = len(entry["outputs"]["7"]["images"])
    assert sent_frames == min(CLIP_FRAMES, 48), "the overlay node previews its frames (up to 48, evenly spread)"
    counter = page.locator('[data-editctrl="overlay-counter"]').inner_text()
    assert counter.endswith(f" / {sent_frames}") and 1 <= int(counter.split(" / ")[0]) <= sent_frames, counter
    mui.fit_view(page)
    shoot(page, shots, "picker-4-ran")

    # 4. Undo removes the point, Clear removes everything; the JSON follows
    page.locator('[data-editctrl="picker-undo"]').click()
    assert [list(p) for p in json.loads(widget_value(page, 3, "picks"))["picks"]] == [["label", "box"]]
    page.locator('[data-editctrl="picker-clear"]').click()
    assert json.loads(widget_value(page, 3, "picks"))["picks"] == []


@needs_browser
def test_picks_typed_into_the_widget_are_drawn(page: Any, frontend_server: ComfyServer) -> None:
    """The JSON widget is the single source of truth: typed picks (in another frame size) are drawn scaled, and a
    text that does not parse is reported on the node."""
    load(page, mui.to_ui(PICKER_API, frontend_server.object_info()), "picker-typed")
    page.evaluate("() => app.graph.getNodeById(3).widgets.find(w => w.name === 'picks').element.dataset.test = 'picks'")
    textarea = page.locator('textarea[data-test="picks"]')
    textarea.fill(json.dumps({"width": 96, "height": 64, "picks": [{"label": "a", "box": [10, 10, 30, 40]},
                                                                    {"label": "b", "point": [50, 20]}]}))
    stage = page.locator('[data-editctrl="picker-stage"]')
    rect = page.locator('[data-editctrl="picker-stage"] [data-pick] rect')

    def drawn() -> list[float]:
        return [float(rect.get_attribute(k)) for k in ("x", "y", "width", "height")]

    # before any run the picks are drawn in their own frame size ...
    assert stage.get_attribute("viewBox") == "0 0 96 64" and rect.count() == 1 and drawn() == [10, 10, 20, 30]
    assert page.locator('[data-editctrl="picker-stage"] [data-pick] circle').count() == 1
    assert "2 pick(s)" in page.locator('[data-editctrl="picker-status"]').inner_text()
    # ... and once the node showed its 192x128 keyframe, scaled onto it (as the node reads them)
    page.evaluate("""() => app.graph.getNodeById(3).editctrlPicker.setFrame(
        {filename: 'none.png', subfolder: '', type: 'temp', width: 192, height: 128, keyframe: 0, frames: 25})""")
    assert stage.get_attribute("viewBox") == "0 0 192 128" and drawn() == [20, 20, 40, 60]
    # a text that does not parse is reported, and a drag does not overwrite it; Clear empties it
    textarea.fill("{not json")
    assert "does not parse" in page.locator('[data-editctrl="picker-status"]').inner_text()
    page.mouse.move(*to_screen(page, '[data-editctrl="picker-stage"]', (10, 10), (CLIP_W, CLIP_H)))
    page.mouse.down()
    page.mouse.move(*to_screen(page, '[data-editctrl="picker-stage"]', (60, 60), (CLIP_W, CLIP_H)), steps=4)
    page.mouse.up()
    assert widget_value(page, 3, "picks") == "{not json"
    assert "fix or clear" in page.locator('[data-editctrl="picker-status"]').inner_text()
    page.locator('[data-editctrl="picker-clear"]').click()
    assert json.loads(widget_value(page, 3, "picks")) == {"width": 192, "height": 128, "picks": []}
    assert textarea.input_value() == widget_value(page, 3, "picks")


@needs_browser
def test_overlay_player_plays_every_frame(page: Any, frontend_server: ComfyServer, tmp_path: Path) -> None:
    """Given several frames (as EditCtrl Mask Overlay's UI output lists them), the node's player plays, pauses and
    seeks through all of them."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    refs = []
    for i, colour in enumerate(colours):
        path = tmp_path / f"editctrl_player_{i}.png"
        Image.new("RGB", (48, 32), colour).save(path)
        uploaded = frontend_server.upload_image(path)
        refs.append({"filename": uploaded["name"], "subfolder": uploaded["subfolder"], "type": uploaded["type"]})
    page.evaluate("""(refs) => {
        app.graph.clear();
        const n = LiteGraph.createNode('EditCtrlMaskOverlay'); n.pos = [200, 200]; app.graph.add(n);
        n.onExecuted({images: refs});
    }""", refs)
    counter = page.locator('[data-editctrl="overlay-counter"]')
    assert counter.inner_text() in {f"{i} / 4" for i in range(1, 5)}
    player = page.locator('[data-editctrl="overlay-player"]')
    assert player.get_attribute("data-playing") == "true"
    seen = set()
    for _ in range(40):
        seen.add(player.get_attribute("data-frame"))
        page.wait_for_timeout(25)
    assert seen >= {"0", "1", "2", "3"}, seen
    page.locator('[data-editctrl="overlay-play"]').click()  # pause
    assert player.get_attribute("data-playing") == "false"
    page.locator('[data-editctrl="overlay-slider"]').fill("2")
    assert counter.inner_text() == "3 / 4"
    src = page.locator('[data-editctrl="overlay-frame"]').get_attribute("src")
    assert refs[2]["filename"] in src
    pixel = page.evaluate("""async (src) => {
        const img = new Image(); img.src = src; await img.decode();
        const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
        const g = c.getContext('2d'); g.drawImage(img, 0, 0); return [...g.getImageData(5, 5, 1, 1).data.slice(0, 3)];
    }""", src)
    assert tuple(pixel) == colours[2]


@needs_browser
@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.stem)
def test_template_layout_in_the_browser(page: Any, frontend_server: ComfyServer, shots: Path, template: Path) -> None:
    """Each template loads; measured on the page, no two nodes overlap, every node is tall enough for its widgets
    and every DOM widget (ours, the textareas, the video preview) lies inside its node."""
    workflow = json.loads(template.read_text(encoding="utf-8"))
    load(page, workflow, template.stem)
    page.wait_for_timeout(1500)  # the video preview loads and resizes Load Video
    nodes = measure(page)
    assert len(nodes) == len(workflow["nodes"])
    assert {n["type"] for n in nodes} == {n["type"] for n in workflow["nodes"]}
    shoot(page, shots, f"template-{template.stem}")
    assert check_layout(nodes) == []


@needs_browser
def test_fresh_install_template_runs_from_the_run_button(page: Any, frontend_server: ComfyServer, shots: Path) -> None:
    """The fresh-install template, as the Browse Templates dialog gets it, runs from the Run button on a server that
    only has what the pack brings (the demo clip it wrote into input/, the tiny presets); the reports, the keyframe
    and the overlay show on their nodes, and the grown nodes (video previews) still overlap nothing."""
    server = frontend_server
    assert (server.input_dir / "editctrl_demo.mp4").is_file()  # written by the pack when it loaded
    (fresh,) = [t for t in mui.TEMPLATES if t.runs_on_fresh_install]
    listed = server.get("/workflow_templates").json()
    assert fresh.name in listed.get("ComfyUI-EditCtrl", []), listed
    workflow = page.evaluate("async (u) => (await fetch(u)).json()",
                             f"/api/workflow_templates/ComfyUI-EditCtrl/{fresh.name}.json")
    load(page, workflow, fresh.name)
    _, entry = run_from_ui(page, server, timeout=400)
    assert entry["status"]["status_str"] == "success", errors_of(entry)
    page.wait_for_timeout(1500)
    by_type = {n["type"]: n["id"] for n in workflow["nodes"]}
    # the sampler's mode/geometry report and every other text output are shown on their nodes
    texts = {nid: out["text"] for nid, out in entry["outputs"].items() if "text" in out}
    assert str(by_type["EditCtrlSampler"]) in texts
    for nid, text in texts.items():
        shown = page.evaluate("(id) => app.graph.getNodeById(id).editctrlReport?.box.textContent", int(nid))
        assert shown == "\n".join(text), (nid, shown, text)
    assert "mode training_free" in texts[str(by_type["EditCtrlSampler"])][0]
    picker = by_type["EditCtrlObjectPicker"]
    assert page.evaluate("(id) => app.graph.getNodeById(id).editctrlPicker.frame?.width", picker) == CLIP_W
    overlay = entry["outputs"][str(by_type["EditCtrlMaskOverlay"])]["images"]
    assert page.evaluate("(id) => app.graph.getNodeById(id).editctrlPlayer.frames.length",
                         by_type["EditCtrlMaskOverlay"]) == len(overlay)
    videos = [p for p in server.output_files(entry) if p.suffix == ".mp4"]
    assert len(videos) == 2 and all(p.stat().st_size > 0 for p in videos)
    mui.fit_view(page)
    shoot(page, shots, "fresh-install-template-ran")
    assert check_layout(measure(page)) == []


@needs_browser
def test_picker_in_the_vue_node_renderer(page: Any, frontend_server: ComfyServer, shots: Path) -> None:
    """With the Vue node renderer on (canvas-drawn widgets break there), the picker's DOM preview is shown in the
    node and a drag still writes the JSON widget."""
    picks = {"width": CLIP_W, "height": CLIP_H, "picks": [{"label": "disc", "box": [44, 34, 100, 90]}]}
    api = json.loads(json.dumps(PICKER_API))
    api["3"]["inputs"]["picks"] = json.dumps(picks)
    page.evaluate("async () => await app.extensionManager.setting.set('Comfy.VueNodes.Enabled', true)")
    try:
        load(page, mui.to_ui(api, frontend_server.object_info()), "picker-vue")
        page.wait_for_timeout(1000)
        stage = page.locator('[data-editctrl="picker-stage"]')
        assert stage.is_visible()
        assert page.locator('[data-node-id="3"]').count() == 1, "the Vue renderer is not on"
        node_box, stage_box = page.locator('[data-node-id="3"]').bounding_box(), stage.bounding_box()
        assert node_box["x"] <= stage_box["x"] and stage_box["x"] + stage_box["width"] <= node_box["x"] + node_box["width"] + 1
        assert node_box["y"] <= stage_box["y"] and stage_box["y"] + stage_box["height"] <= node_box["y"] + node_box["height"] + 1
        pos_before = page.evaluate("() => [...app.graph.getNodeById(3).pos]")
        page.mouse.move(*to_screen(page, '[data-editctrl="picker-stage"]', (120, 20), (CLIP_W, CLIP_H)))
        page.mouse.down()
        page.mouse.move(*to_screen(page, '[data-editctrl="picker-stage"]', (180, 70), (CLIP_W, CLIP_H)), steps=6)
        page.mouse.up()
        shoot(page, shots, "picker-vue-nodes")
        after = json.loads(widget_value(page, 3, "picks"))["picks"]
        assert after[0] == picks["picks"][0] and len(after) == 2
        assert np.allclose(after[1]["box"], [120, 20, 180, 70], atol=1.01), after
        assert page.evaluate("() => [...app.graph.getNodeById(3).pos]") == pos_before  # the node did not move
    finally:
        page.evaluate("async () => await app.extensionManager.setting.set('Comfy.VueNodes.Enabled', false)")


# ---- the picker node, headless (the same JSON the browser writes) ---------------------------------------------


def _picker_prompt(picks: str, frames: int = 3, point_size: int = POINT_SIZE, keyframe: int = 0) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": CLIP_W, "height": CLIP_H, "batch_size": frames, "color": 0}},
        "2": {"class_type": "EditCtrlObjectPicker",
              "inputs": {"images": ["1", 0], "keyframe": keyframe, "picks": picks, "label": "thing",
                         "point_size": point_size}},
        "3": {"class_type": "EditCtrlSAMRefine",
              "inputs": {"images": ["1", 0], "detections": ["2", 0], "select_by": "all", "selection": "",
                         "clip_to_box": True, "box_margin": 0.1, "threshold": 0.0}},
        "4": {"class_type": "MaskToImage", "inputs": {"mask": ["3", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "editctrl_picker/mask"}},
    }


def test_picker_headless_scales_picks_and_grows_points(comfy_server: ComfyServer) -> None:
    """Picks made on a 96x64 preview land on the 192x128 frames ×2; a point becomes a point_size box (clamped at the
    frame edge); labels default to the `label` widget; the UI entry carries the keyframe PNG and frame size."""
    picks = {"width": 96, "height": 64, "picks": [{"box": [10, 10, 30, 40]}, {"label": "dot", "point": [95, 2]}]}
    result = comfy_server.run(_picker_prompt(json.dumps(picks), point_size=20), timeout=120)
    out = result.history["outputs"]
    mask = np.stack([np.asarray(Image.open(p))[..., 0] for p in comfy_server.output_files(result.history, ["output"])])
    want = np.zeros((3, CLIP_H, CLIP_W), np.uint8)
    want[:, 20:80, 20:60] = 255  # box ×2
    want[:, 0:14, 180:192] = 255  # point (190, 4) ± 10, clamped to the frame
    assert np.array_equal(mask, want)
    assert "objects: thing, dot" in out["2"]["text"][0]
    (entry,) = out["2"][UI_KEY]
    assert (entry["width"], entry["height"], entry["keyframe"], entry["frames"], entry["type"]) == (CLIP_W, CLIP_H, 0, 3, "temp")
    assert comfy_server.view(entry["filename"], entry["subfolder"], entry["type"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "images" not in out["2"]  # no second (canvas) preview of the keyframe


@pytest.mark.parametrize(("picks", "message"), [
    ("[]", "nothing is picked yet"),
    ("", "nothing is picked yet"),
    ("{not json", "not valid JSON"),
    ('[{"box": [1, 2, 3]}]', "write 4 numbers"),
    ('[{"box": [10, 10, 20, 20], "point": [1, 1]}]', "exactly one of 'box' and 'point'"),
    ('[{"point": [500, 10]}]', "outside the 192x128 frame"),
    ('[{"box": [300, 10, 400, 20]}]', "less than 1 px"),
    ('[{"box": [10, 10, 20, 20], "colour": "red"}]', "unknown key(s) ['colour']"),
    ('{"width": 96, "picks": []}', "give both 'width' and 'height'"),
    ('[{"label": "", "box": [1, 1, 5, 5]}]', "non-empty string"),
])
def test_picker_headless_errors_name_the_problem(comfy_server: ComfyServer, picks: str, message: str) -> None:
    """Bad picks stop the picker with a message that says what is wrong (and shows the form)."""
    result = comfy_server.run(_picker_prompt(picks), timeout=120, check=False)
    assert result.error is not None and result.error["data"]["node_id"] == "2"
    assert message in result.error["data"]["exception_message"], result.error["data"]["exception_message"]


def test_picker_headless_keyframe_outside_the_clip(comfy_server: ComfyServer) -> None:
    result = comfy_server.run(_picker_prompt('[{"point": [5, 5]}]', frames=3, keyframe=5), timeout=120, check=False)
    assert result.error is not None and "outside the clip of 3 frames" in result.error["data"]["exception_message"]
    ok = comfy_server.run(_picker_prompt('[{"point": [5, 5]}]', frames=3, keyframe=-1), timeout=120)
    assert "keyframe 2:" in ok.history["outputs"]["2"]["text"][0]


def test_expected_mask_helper_matches_the_core() -> None:
    """The test's own oracle: a box [40, 30, 140, 110] covers pixels 40..139 x 30..109 on every frame."""
    mask = expected_mask({"picks": [{"box": [40, 30, 140, 110]}]})
    want = np.zeros_like(mask)
    want[:, 30:110, 40:140] = 255
    assert np.array_equal(mask, want)
