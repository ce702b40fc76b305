"""Run a workflow on a real, headless ComfyUI server and print live progress and the output files.

    python scripts/demo.py [--workflow graphs/editctrl_demo.api.json] [--input FILE ...]

The server runs with this repo linked in as a custom node pack (see scripts/setup.sh); its state lives
in out/demo-server/ and its outputs in out/.  Input files named with --input are uploaded through
POST /upload/image; input files the workflow needs but that are missing are generated when a generator
is known (GENERATORS).  Prints one `output: /abs/path` line per output file; exits non-zero with the
server's error (node type + exception message) when the run fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from comfy_server import ComfyError, ComfyServer, ExecutionFailed, PromptRejected  # noqa: E402
from workflow_convert import ConversionError, convert  # noqa: E402

#: Input files that can be made when a workflow needs them and none was given: name → command (output path appended).
GENERATORS: dict[str, list[str]] = {
    "editctrl_demo.mp4": [sys.executable, str(ROOT / "scripts" / "make_demo_clip.py")],
}


def comfy_dir() -> Path:
    """The ComfyUI tree: $COMFYUI_DIR, else .cache/comfyui (made by scripts/setup.sh)."""
    d = Path(os.environ.get("COMFYUI_DIR") or ROOT / ".cache" / "comfyui")
    if not (d / "main.py").is_file():
        sys.exit(f"error: no ComfyUI at {d}: run scripts/setup.sh first")
    return d


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


def provide_inputs(server: ComfyServer, prompt: dict[str, Any], given: list[Path], work_dir: Path) -> None:
    """Upload the given files, then generate and upload any still-missing input the prompt needs."""
    for f in given:
        if not f.is_file():
            sys.exit(f"error: --input {f} does not exist")
        up = server.upload_image(f)
        print(f"uploaded: {f} -> input/{up['subfolder'] + '/' if up['subfolder'] else ''}{up['name']}", flush=True)
    missing = [n for n in needed_inputs(prompt, server.object_info()) if not (server.input_dir / n).is_file()]
    for name in dict.fromkeys(missing):
        gen = GENERATORS.get(name)
        if gen is None or not Path(gen[-1]).is_file():
            sys.exit(f"error: the workflow needs input file {name!r}; pass it with --input FILE")
        target = work_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        print(f"generating: {name} ({' '.join(Path(a).name for a in gen[1:])})", flush=True)
        subprocess.run([*gen, str(target)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        up = server.upload_image(target)
        print(f"uploaded: {target} -> input/{up['name']}", flush=True)


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


def main(argv: list[str] | None = None) -> int:
    """Start the server, provide inputs, run the workflow, print its outputs."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workflow", type=Path, default=ROOT / "graphs" / "editctrl_demo.api.json",
                    help="API-format (or UI-format) workflow JSON")  # fmt: skip
    ap.add_argument("--input", type=Path, nargs="+", action="extend", default=[], metavar="FILE",
                    help="files to upload to the server's input folder before queueing")  # fmt: skip
    ap.add_argument("--out", type=Path, default=ROOT / "out", help="output folder (default out/)")
    ap.add_argument("--server-dir", type=Path, default=ROOT / "out" / "demo-server", help="server state folder")
    ap.add_argument("--models", type=Path, help="folder whose subfolders (loras, LLM, …) are model folders")
    ap.add_argument("--gpu", action="store_true", help="let ComfyUI use the GPU (default: --cpu)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the run")
    args = ap.parse_args(argv)

    if not args.workflow.is_file():
        print(f"error: workflow {args.workflow} not found", file=sys.stderr)
        return 2
    model_paths = {d.name: d for d in sorted(args.models.iterdir()) if d.is_dir()} if args.models else None
    server = ComfyServer(args.server_dir, comfy_dir(), python=sys.executable, output_dir=args.out,
                         model_paths=model_paths, cpu=not args.gpu)  # fmt: skip
    print(f"starting ComfyUI on {server.url} (log: {server.log_path})", flush=True)
    try:
        with server:
            prompt = load_prompt(args.workflow, server)
            provide_inputs(server, prompt, list(args.input), args.server_dir / "generated")
            with server.client(f"editctrl-demo-{uuid.uuid4().hex[:8]}") as client:
                pid = client.queue(prompt)
                print(f"queued prompt {pid} ({len(prompt)} nodes)", flush=True)
                events = client.wait(pid, on_event=make_printer(prompt), timeout=args.timeout)
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
            for f in server.output_files(history, types=("temp",)):
                print(f"preview: {f}", flush=True)
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
