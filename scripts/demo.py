"""Run an EditCtrl edit on a real, headless ComfyUI server and print what ran, what it cost and where the results are.

    python scripts/demo.py --models MODELS [--input CLIP] [--mask-box x,y,w,h | --mask MASKFILE] [--prompt TEXT]

Without --input it edits the demo clip (a disc moving over a drifting texture, made when missing) with
graphs/editctrl_demo_trained.api.json, whose rectangle covers the disc's path: a minority of the frame. With --input
it uploads CLIP to the server's input folder, points the workflow's Load Video at it and masks the --mask-box
rectangle (pixels, inside the frame) or the --mask file (an image for every frame or a mask video; white or red =
edit), so the clip's own size, frame count, fps and audio come out.  Without a mask option the centre quarter of the
frame is edited (and said so).  At the end it prints the mode that ran and the share of tokens computed (from the
sampler's report in /history), the time, and the paths of the edited video, the mask overlay and a before/after
frame sheet PNG it writes next to the edited video.

The server runs with this repo linked in as a custom node pack (see scripts/setup.sh); its state lives in
out/demo-server/ and its outputs in out/.  Bad input (a missing or unreadable clip, a box outside the frame, an empty
mask) exits 1 with the reason before the server starts; bad arguments exit 2 with the usage; a failed run exits 1
with the server's error (node type + exception message).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from comfy_server import ComfyError, ComfyServer, ExecutionFailed, PromptRejected  # noqa: E402
from workflow_convert import ConversionError, convert  # noqa: E402

DEFAULT_WORKFLOW = ROOT / "graphs" / "editctrl_demo_trained.api.json"
DEMO_CLIP = "editctrl_demo.mp4"
#: Input files that can be made when a workflow needs them and none was given: name → command (output path appended).
GENERATORS: dict[str, list[str]] = {
    DEMO_CLIP: [sys.executable, str(ROOT / "scripts" / "make_demo_clip.py")],
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
SHEET_FRAMES = 4  # frames (evenly spread over the clip) on the before/after sheet
SHEET_MAX_WIDTH = 320  # frames wider than this are scaled down on the sheet


class DemoError(Exception):
    """A problem with the user's input, said plainly (exit status 1)."""


@dataclass(frozen=True)
class ClipInfo:
    """What the demo needs to know about a clip before the server starts."""

    path: Path
    frames: int
    width: int
    height: int
    fps: float
    audio: bool


@dataclass(frozen=True)
class MaskFile:
    """A mask file checked against the clip: `image` (one frame for all) or `video` (one per frame)."""

    path: Path
    kind: str
    share: float  # share of the clip's pixels it marks


def comfy_dir() -> Path:
    """The ComfyUI tree: $COMFYUI_DIR, else <cache>/comfyui made by scripts/setup.sh (cache: $EDITCTRL_CACHE or
    .cache, as setup.sh chooses it)."""
    d = Path(os.environ.get("COMFYUI_DIR") or Path(os.environ.get("EDITCTRL_CACHE") or ROOT / ".cache") / "comfyui")
    if not (d / "main.py").is_file():
        sys.exit(f"error: no ComfyUI at {d}: run scripts/setup.sh first")
    return d


def parse_box(text: str) -> tuple[int, int, int, int]:
    """`x,y,w,h` in pixels (argparse type: bad syntax is a usage error)."""
    parts = text.replace(" ", "").split(",")
    try:
        x, y, w, h = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected x,y,w,h (four integers, pixels), got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"width and height must be at least 1, got {text!r}")
    return x, y, w, h


def probe_clip(path: Path, flag: str = "--input") -> ClipInfo:
    """Frame count, size, fps and whether it has audio, decoding the clip once (frames are not kept)."""
    if not path.is_file():
        raise DemoError(f"{flag} {path}: no such file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DemoError(f"{flag} {path}: the file has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 24)
            audio = bool(container.streams.audio)
            count, width, height = 0, 0, 0
            for frame in container.decode(stream):
                count, width, height = count + 1, frame.width, frame.height
    except (av.error.FFmpegError, OSError) as exc:
        raise DemoError(f"{flag} {path}: cannot read it as a video ({exc})") from None
    if count == 0:
        raise DemoError(f"{flag} {path}: the video has no frames")
    return ClipInfo(path, count, width, height, fps, audio)


def check_box(box: tuple[int, int, int, int], clip: ClipInfo) -> None:
    """The rectangle must lie inside the clip's frame."""
    x, y, w, h = box
    if x < 0 or y < 0 or x + w > clip.width or y + h > clip.height:
        raise DemoError(f"--mask-box {x},{y},{w},{h} is outside the {clip.width}x{clip.height} frame of "
                        f"{clip.path.name}: it needs x >= 0, y >= 0, x + width <= {clip.width} and "
                        f"y + height <= {clip.height}")


def _mask_frames(path: Path) -> tuple[str, list[np.ndarray]]:
    """('image' | 'video', [H,W] bool masks: red channel > 0.5), reading the file as an image, else as a video."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                return "image", [np.asarray(im.convert("RGB"))[..., 0] > 127]
        except (UnidentifiedImageError, OSError) as exc:
            raise DemoError(f"--mask {path}: cannot read it as an image ({exc})") from None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DemoError(f"--mask {path}: neither an image ({', '.join(sorted(IMAGE_SUFFIXES))}) nor a video")
            frames = [f.to_ndarray(format="rgb24")[..., 0] > 127 for f in container.decode(container.streams.video[0])]
    except (av.error.FFmpegError, OSError) as exc:
        raise DemoError(f"--mask {path}: cannot read it as an image or a video ({exc})") from None
    if not frames:
        raise DemoError(f"--mask {path}: the video has no frames")
    return "video", frames


def check_mask(path: Path, clip: ClipInfo) -> MaskFile:
    """The mask file must have the clip's size, one frame or the clip's frame count, and mark some pixel."""
    if not path.is_file():
        raise DemoError(f"--mask {path}: no such file")
    kind, frames = _mask_frames(path)
    height, width = frames[0].shape
    if (width, height) != (clip.width, clip.height):
        raise DemoError(f"--mask {path} is {width}x{height} but the clip {clip.path.name} is "
                        f"{clip.width}x{clip.height}: the mask must have the clip's size")
    if kind == "video" and len(frames) not in (1, clip.frames):
        raise DemoError(f"--mask {path} has {len(frames)} frames but the clip {clip.path.name} has {clip.frames}: "
                        "give one mask frame per clip frame, or a single image for all")
    share = float(np.mean([f.mean() for f in frames]))
    if share == 0.0:
        raise DemoError(f"--mask {path}: the mask is empty (no pixel is white or red); "
                        "paint the region to edit white on black")
    return MaskFile(path, kind, share)


def load_prompt(path: Path, server: ComfyServer) -> dict[str, Any]:
    """Read an API prompt; a UI-format workflow (with `nodes` and `links`) is converted first."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        return convert(data, server.object_info())
    return data


def needed_inputs(prompt: dict[str, Any], object_info: dict[str, Any]) -> list[str]:
    """File names the prompt reads from the input folder (values of upload-combo inputs)."""
    names: list[str] = []
    for node in prompt.values():
        spec = object_info.get(node.get("class_type"), {}).get("input", {})
        defs = {**(spec.get("required") or {}), **(spec.get("optional") or {})}
        for name, value in node.get("inputs", {}).items():
            opts = defs.get(name, [None, {}])
            opts = opts[1] if len(opts) > 1 and isinstance(opts[1], dict) else {}
            if isinstance(value, str) and any(k.endswith("_upload") and v for k, v in opts.items()):
                names.append(value.split(" [")[0])  # drop an annotation like "x.png [output]"
    return names


def upload(server: ComfyServer, path: Path) -> str:
    """Upload a file to the server's input folder; the name the workflow refers to it by."""
    up = server.upload_image(path)
    name = f"{up['subfolder']}/{up['name']}" if up.get("subfolder") else up["name"]
    print(f"uploaded: {path} -> input/{name}", flush=True)
    return name


def generate(name: str, target: Path) -> Path:
    """Write a known generated input (GENERATORS) to `target`."""
    gen = GENERATORS[name]
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"generating: {name} ({' '.join(Path(a).name for a in gen[1:])})", flush=True)
    subprocess.run([*gen, str(target)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return target


def provide_inputs(server: ComfyServer, prompt: dict[str, Any], work_dir: Path) -> None:
    """Generate and upload any input the prompt needs that the input folder lacks, or say which file to pass."""
    missing = [n for n in needed_inputs(prompt, server.object_info()) if not (server.input_dir / n).is_file()]
    for name in dict.fromkeys(missing):
        if name not in GENERATORS:
            sys.exit(f"error: the workflow needs input file {name!r}; pass it with --upload FILE")
        upload(server, generate(name, work_dir / name))


def nodes_of(prompt: dict[str, Any], class_type: str) -> list[str]:
    """Ids of the prompt's nodes of one class."""
    return [nid for nid, node in prompt.items() if node.get("class_type") == class_type]


def only_node(prompt: dict[str, Any], class_type: str, why: str) -> str:
    """The id of the prompt's one node of `class_type`, or a DemoError saying why one is needed."""
    found = nodes_of(prompt, class_type)
    if len(found) != 1:
        raise DemoError(f"{why} needs a workflow with exactly one {class_type} node; this one has {len(found)}")
    return found[0]


def new_id(prompt: dict[str, Any]) -> str:
    """A node id not used in the prompt."""
    return str(max((int(k) for k in prompt if k.isdigit()), default=0) + 1)


def set_mask(prompt: dict[str, Any], box: tuple[int, int, int, int] | None, mask: MaskFile | None,
             mask_name: str | None) -> None:
    """Point the encoder's mask at the box (an EditCtrl Rectangle Mask) or the uploaded mask file."""
    enc = only_node(prompt, "EditCtrlVAEEncode", "a mask option")
    inputs = prompt[enc]["inputs"]
    if box is not None:
        source = inputs.get("mask")
        x, y, w, h = box
        values = {"x": x, "y": y, "width": w, "height": h}
        if isinstance(source, list) and prompt.get(str(source[0]), {}).get("class_type") == "EditCtrlRectMask":
            prompt[str(source[0])]["inputs"].update(values)
        else:
            rect = new_id(prompt)
            prompt[rect] = {"class_type": "EditCtrlRectMask", "inputs": {"images": inputs["images"], **values}}
            inputs["mask"] = [rect, 0]
        return
    assert mask is not None and mask_name is not None
    load = new_id(prompt)
    if mask.kind == "image":
        prompt[load] = {"class_type": "LoadImage", "inputs": {"image": mask_name}}
        image = [load, 0]
    else:
        prompt[load] = {"class_type": "LoadVideo", "inputs": {"file": mask_name}}
        parts = new_id(prompt)
        prompt[parts] = {"class_type": "GetVideoComponents", "inputs": {"video": [load, 0]}}
        image = [parts, 0]
    to_mask = new_id(prompt)
    prompt[to_mask] = {"class_type": "ImageToMask", "inputs": {"image": image, "channel": "red"}}
    binary = new_id(prompt)
    prompt[binary] = {"class_type": "ThresholdMask", "inputs": {"mask": [to_mask, 0], "value": 0.5}}
    inputs["mask"] = [binary, 0]


def set_prompt_text(prompt: dict[str, Any], slot: str, text: str) -> None:
    """Set the text of the encode node feeding the sampler's `slot` (positive / negative)."""
    sampler = only_node(prompt, "EditCtrlSampler", f"--{'prompt' if slot == 'positive' else 'negative'}")
    source = prompt[sampler]["inputs"].get(slot)
    node = prompt.get(str(source[0])) if isinstance(source, list) else None
    if node is None or "text" not in node.get("inputs", {}):
        raise DemoError(f"the sampler's {slot} input does not come from a text-encode node with a 'text' widget")
    node["inputs"]["text"] = text


def sampler_report(history: dict[str, Any], prompt: dict[str, Any]) -> list[str]:
    """The lines each EditCtrl Sampler node reported in its UI text (kept in /history)."""
    lines: list[str] = []
    for nid in nodes_of(prompt, "EditCtrlSampler"):
        text = (history.get("outputs", {}).get(nid) or {}).get("text") or []
        for chunk in ([text] if isinstance(text, str) else text):
            lines.extend(line for line in str(chunk).splitlines() if line)
    return lines


def source_of(prompt: dict[str, Any], link: Any) -> dict[str, Any]:
    """The node a link `[id, slot]` comes from ({} if it is not a link)."""
    return prompt.get(str(link[0]), {}) if isinstance(link, list) else {}


def video_outputs(history: dict[str, Any], prompt: dict[str, Any], server: ComfyServer) -> dict[str, list[Path]]:
    """Files of the SaveVideo nodes: `overlay` (made from EditCtrl Mask Overlay frames) and `edited` (the others)."""
    found: dict[str, list[Path]] = {"edited": [], "overlay": []}
    for nid in nodes_of(prompt, "SaveVideo"):
        create = source_of(prompt, prompt[nid]["inputs"].get("video"))
        images = source_of(prompt, create.get("inputs", {}).get("images"))
        kind = "overlay" if images.get("class_type") == "EditCtrlMaskOverlay" else "edited"
        found[kind] += server.output_files({"outputs": {nid: history.get("outputs", {}).get(nid) or {}}},
                                           types=("output",))
    return found


def read_frames(path: Path, indices: list[int]) -> dict[int, np.ndarray]:
    """The frames at `indices` of a video, as [H,W,3] uint8."""
    wanted, got = set(indices), {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if i in wanted:
                got[i] = frame.to_ndarray(format="rgb24")
            if len(got) == len(wanted):
                break
    return got


def frame_sheet(before: Path, after: Path, target: Path, count: int = SHEET_FRAMES) -> Path:
    """A PNG with `count` frames spread over the clip: the source above, the edit below, frame numbers on top."""
    from PIL import Image, ImageDraw

    total = probe_clip(after, "edited video").frames
    picks = sorted({round(i * (total - 1) / max(count - 1, 1)) for i in range(count)})
    src, out = read_frames(before, picks), read_frames(after, picks)
    picks = [i for i in picks if i in src and i in out]
    if not picks:
        raise DemoError(f"no frame of {after.name} could be read back for the frame sheet")
    h, w = out[picks[0]].shape[:2]
    scale = min(1.0, SHEET_MAX_WIDTH / w)
    fw, fh = max(1, round(w * scale)), max(1, round(h * scale))
    label_w, label_h, gap = 56, 16, 4
    sheet = Image.new("RGB", (label_w + len(picks) * (fw + gap), label_h + 2 * (fh + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (name, frames) in enumerate((("before", src), ("after", out))):
        top = label_h + row * (fh + gap)
        draw.text((4, top + fh // 2 - 6), name, fill="black")
        for col, i in enumerate(picks):
            left = label_w + col * (fw + gap)
            if row == 0:
                draw.text((left + 2, 2), f"frame {i}", fill="black")
            sheet.paste(Image.fromarray(frames[i]).resize((fw, fh), Image.BILINEAR), (left, top))
    target.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(target)
    return target


def make_printer(prompt: dict[str, Any]) -> Any:
    """An on_event callback printing executing-node changes and progress lines."""
    start = time.monotonic()

    def label(node_id: Any) -> str:
        """'<id> (<class_type>)' for a node id."""
        return f"{node_id} ({prompt.get(str(node_id), {}).get('class_type', '?')})"

    def on_event(ev: dict[str, Any]) -> None:
        """Print one line for the events a user wants to see."""
        t, d = ev["type"], ev["data"]
        stamp = f"[{time.monotonic() - start:7.2f}s]"
        if t == "executing" and d.get("node") is not None:
            print(f"{stamp} executing node {label(d['node'])}", flush=True)
        elif t == "progress":
            print(f"{stamp} progress  node {label(d.get('node'))}: {d.get('value')}/{d.get('max')}", flush=True)
        elif t == "execution_cached" and d.get("nodes"):
            print(f"{stamp} cached    nodes {', '.join(map(str, d['nodes']))}", flush=True)
        elif t == "execution_success":
            print(f"{stamp} done", flush=True)

    return on_event


def summarize(report: list[str], videos: dict[str, list[Path]], sheet: Path | None, run_s: float,
              total_s: float) -> None:
    """The closing lines: mode, token share, time, the edited video, the overlay and the frame sheet."""
    mode = next((m for m in (re.match(r"mode (\S+): (.*)", line) for line in report) if m), None)
    tokens = next((m for m in (re.search(r"edited (\d+) of (\d+) tokens \(([\d.]+)%\)", line) for line in report)
                   if m), None)
    print("---", flush=True)
    print(f"mode: {mode.group(1)} ({mode.group(2)})" if mode else "mode: (the sampler did not report one)")
    if tokens:
        print(f"tokens computed: {tokens.group(3)}% ({tokens.group(1)} of {tokens.group(2)} tokens of the clip)")
    else:
        print("tokens computed: " + next((line for line in report if "never ran" in line),
                                         "(the sampler did not report them)"))
    print(f"time: {run_s:.1f} s for the run (queued to done), {total_s:.1f} s in all (server start included)")
    for f in videos["edited"]:
        print(f"edited video: {f}")
    for f in videos["overlay"]:
        print(f"overlay: {f}")
    if sheet is not None:
        print(f"frame sheet: {sheet}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Check the inputs, start the server, run the workflow, print the summary."""
    started = time.monotonic()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW,
                    help="API-format (or UI-format) workflow JSON (default: graphs/editctrl_demo_trained.api.json)")
    ap.add_argument("--input", type=Path, metavar="CLIP",
                    help="your clip to edit (uploaded; the workflow's Load Video reads it)")  # fmt: skip
    masks = ap.add_mutually_exclusive_group()
    masks.add_argument("--mask-box", type=parse_box, metavar="x,y,w,h",
                       help="edit this rectangle (pixels, inside the frame)")
    masks.add_argument("--mask", type=Path, metavar="MASKFILE",
                       help="edit where this image (all frames) or mask video (per frame) is white or red")
    ap.add_argument("--prompt", help="what the edited region should show (the positive prompt)")
    ap.add_argument("--negative", help="the negative prompt")
    ap.add_argument("--upload", type=Path, nargs="+", action="extend", default=[], metavar="FILE",
                    help="other files to upload to the server's input folder before queueing")
    ap.add_argument("--out", type=Path, default=ROOT / "out", help="output folder (default out/)")
    ap.add_argument("--server-dir", type=Path, default=ROOT / "out" / "demo-server", help="server state folder")
    ap.add_argument("--models", type=Path, help="folder whose subfolders (checkpoints, loras, …) are model folders")
    ap.add_argument("--gpu", action="store_true", help="let ComfyUI use the GPU (default: --cpu)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the run")
    args = ap.parse_args(argv)

    if not args.workflow.is_file():
        print(f"error: workflow {args.workflow} not found", file=sys.stderr)
        return 2
    if args.models is not None and not args.models.is_dir():
        print(f"error: --models {args.models} is not a folder", file=sys.stderr)
        return 2
    work_dir = args.server_dir / "generated"
    editing = args.input is not None or args.mask_box is not None or args.mask is not None
    try:
        for f in args.upload:
            if not f.is_file():
                raise DemoError(f"--upload {f}: no such file")
        clip: ClipInfo | None = None
        box, mask = args.mask_box, None
        if editing:
            # a mask option without --input edits the demo clip, made here so that it can be checked first
            clip = probe_clip(args.input if args.input is not None else generate(DEMO_CLIP, work_dir / DEMO_CLIP))
            print(f"clip: {clip.path} ({clip.frames} frames, {clip.width}x{clip.height}, {clip.fps:g} fps, "
                  f"{'with' if clip.audio else 'no'} audio)", flush=True)
            if args.mask is not None:
                mask = check_mask(args.mask, clip)
                print(f"mask: {mask.path} ({mask.kind}, {100 * mask.share:.1f}% of the pixels)", flush=True)
            else:
                if box is None:
                    box = (clip.width // 4, clip.height // 4, max(1, clip.width // 2), max(1, clip.height // 2))
                    print("mask: no --mask-box or --mask given, so the centre of the frame: --mask-box "
                          + ",".join(map(str, box)), flush=True)
                check_box(box, clip)
                print(f"mask: box {','.join(map(str, box))} "
                      f"({100 * box[2] * box[3] / (clip.width * clip.height):.1f}% of the frame)", flush=True)
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    model_paths = {d.name: d for d in sorted(args.models.iterdir()) if d.is_dir()} if args.models else None
    server = ComfyServer(args.server_dir, comfy_dir(), python=sys.executable, output_dir=args.out,
                         model_paths=model_paths, cpu=not args.gpu)  # fmt: skip
    print(f"starting ComfyUI on {server.url} (log: {server.log_path})", flush=True)
    try:
        with server:
            prompt = load_prompt(args.workflow, server)
            for f in args.upload:
                upload(server, f)
            if clip is not None:
                loader = only_node(prompt, "LoadVideo", "--input")
                prompt[loader]["inputs"]["file"] = upload(server, clip.path)
                set_mask(prompt, box, mask, upload(server, mask.path) if mask is not None else None)
            if args.prompt is not None:
                set_prompt_text(prompt, "positive", args.prompt)
            if args.negative is not None:
                set_prompt_text(prompt, "negative", args.negative)
            provide_inputs(server, prompt, work_dir)
            with server.client(f"editctrl-demo-{uuid.uuid4().hex[:8]}") as client:
                queued = time.monotonic()
                pid = client.queue(prompt)
                print(f"queued prompt {pid} ({len(prompt)} nodes)", flush=True)
                events = client.wait(pid, on_event=make_printer(prompt), timeout=args.timeout)
                run_s = time.monotonic() - queued
                if client.end_reason == "history":
                    print("note: some WebSocket events were missed; the result comes from /history", flush=True)
            history = server.history(pid)
            failed = next((e for e in events if e["type"] in ("execution_error", "execution_interrupted")), None)
            if failed is not None:
                raise ExecutionFailed(failed)
            status = history.get("status", {})
            if status.get("status_str") != "success":
                print(f"error: run ended with status {status.get('status_str')!r}", file=sys.stderr)
                return 1
            files = server.output_files(history, types=("output",))
            if not files:
                print("warning: the workflow wrote no output files", file=sys.stderr)
            for f in files:
                print(f"output: {f}", flush=True)
            previews = server.output_files(history, types=("temp",))
            if previews:
                print(f"previews: {len(previews)} files in {previews[0].parent}", flush=True)
            videos = video_outputs(history, prompt, server)
            sheet = None
            loaders = nodes_of(prompt, "LoadVideo")
            source = clip.path if clip is not None else (
                server.input_dir / prompt[loaders[0]]["inputs"]["file"] if loaders else None)
            if videos["edited"] and source is not None and source.is_file():
                edited = videos["edited"][0]
                sheet = frame_sheet(source, edited, edited.with_name(f"{edited.stem.rstrip('_')}_sheet.png"))
            summarize(sampler_report(history, prompt), videos, sheet, run_s, time.monotonic() - started)
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except PromptRejected as e:
        print(f"error: the server rejected the workflow:\n{e}", file=sys.stderr)
        return 1
    except ExecutionFailed as e:
        print(f"error: {e.node_type} (node {e.node_id}): {e.exception_message or e}", file=sys.stderr)
        return 1
    except (ComfyError, ConversionError, TimeoutError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
