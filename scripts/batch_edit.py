"""Edit a folder of clips through the HTTP API of one or several ComfyUI servers (one per GPU, say).

Each clip is uploaded to a server's input folder, the API-format workflow is queued with that clip in its
LoadVideo node (and optionally a new prompt), progress is followed over the server's websocket, and the outputs
are downloaded next to each other. Clips are shared out over the servers, one clip at a time per server.

    python scripts/batch_edit.py --workflow graphs/editctrl_demo.api.json --clips my_clips/ --out edited/ \\
        --server 127.0.0.1:8188 --server 127.0.0.1:8189 [--prompt "the empty street"] [--prompt-node 5]

Needs `requests` and `websocket-client` (pip install requests websocket-client). Exit code 0 when every clip was
edited, 1 when some failed (the summary says which and why), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import websocket

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")


@dataclass
class Outcome:
    """What happened to one clip."""

    clip: Path
    server: str
    ok: bool = False
    seconds: float = 0.0
    outputs: list[Path] = field(default_factory=list)
    error: str = ""


def load_workflow(path: Path) -> dict[str, Any]:
    """The API-format prompt in `path` (UI-format files are refused: export with 'Save (API)')."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or "nodes" in data or not all(isinstance(v, dict) and "class_type" in v
                                                               for v in data.values()):
        raise ValueError(f"{path} is not an API-format workflow (a dict of node id → class_type/inputs); in "
                         "ComfyUI use Workflow → Export (API)")
    return data


def video_node(workflow: dict[str, Any]) -> str:
    """The id of the workflow's LoadVideo node (the clip goes there)."""
    ids = [k for k, v in workflow.items() if v["class_type"] == "LoadVideo"]
    if len(ids) != 1:
        raise ValueError(f"the workflow needs exactly one LoadVideo node for the clip; it has {len(ids)}")
    return ids[0]


def prepare(workflow: dict[str, Any], clip_name: str, prompt: str | None, prompt_node: str | None
            ) -> dict[str, Any]:
    """A copy of the workflow that loads `clip_name` and, when given, uses `prompt` in `prompt_node`'s text."""
    wf = json.loads(json.dumps(workflow))
    wf[video_node(wf)]["inputs"]["file"] = clip_name
    if prompt is not None:
        if prompt_node not in wf or "text" not in wf[prompt_node]["inputs"]:
            raise ValueError(f"--prompt-node {prompt_node!r} is not a node with a 'text' input in the workflow")
        wf[prompt_node]["inputs"]["text"] = prompt
    return wf


class Server:
    """One ComfyUI server reached over HTTP and its websocket."""

    def __init__(self, address: str, timeout: float):
        self.address = address if "://" in address else f"http://{address}"
        self.timeout = timeout
        self.http = requests.Session()
        self.http.trust_env = False

    def upload(self, clip: Path) -> str:
        with clip.open("rb") as fh:
            r = self.http.post(f"{self.address}/upload/image", files={"image": (clip.name, fh)},
                               data={"overwrite": "true", "type": "input"}, timeout=self.timeout)
        r.raise_for_status()
        return r.json()["name"]

    def run(self, prompt: dict[str, Any], label: str) -> dict[str, Any]:
        """Queue `prompt`, print its progress, return its /history entry (raise with the server's error)."""
        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(f"{self.address.replace('http', 'ws', 1)}/ws?clientId={client_id}",
                                         timeout=self.timeout)
        try:
            r = self.http.post(f"{self.address}/prompt", data=json.dumps({"prompt": prompt, "client_id": client_id}),
                               headers={"Content-Type": "application/json"}, timeout=self.timeout)
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            if r.status_code != 200 or body.get("node_errors"):
                raise RuntimeError(f"prompt refused: {json.dumps(body.get('node_errors') or body)[:500]}")
            prompt_id = body["prompt_id"]
            self._follow(ws, prompt_id, label)
        finally:
            ws.close()
        return self._history(prompt_id)

    def _history(self, prompt_id: str) -> dict[str, Any]:
        """The prompt's /history entry; the server stores it just after announcing the end, so wait for it."""
        deadline = time.monotonic() + min(self.timeout, 60.0)
        while True:
            entry = self.http.get(f"{self.address}/history/{prompt_id}", timeout=self.timeout).json().get(prompt_id)
            if entry is not None:
                return entry
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server finished prompt {prompt_id} but has no history for it")
            time.sleep(0.1)

    def _follow(self, ws: websocket.WebSocket, prompt_id: str, label: str) -> None:
        last = -1
        while True:
            raw = ws.recv()
            if not isinstance(raw, str):
                continue
            event = json.loads(raw)
            data = event.get("data", {})
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if event["type"] == "progress":
                pct = int(100 * data["value"] / max(1, data["max"]))
                if pct // 10 != last // 10:
                    print(f"  {label}: node {data.get('node')} {data['value']}/{data['max']}", flush=True)
                last = pct
            elif event["type"] == "execution_error":
                raise RuntimeError(f"{data.get('node_type')}: {data.get('exception_message', '').strip()}")
            elif event["type"] == "execution_interrupted":
                raise RuntimeError("interrupted on the server")
            elif event["type"] == "execution_success" or (event["type"] == "executing" and data.get("node") is None
                                                          and data.get("prompt_id") == prompt_id):
                return

    def download(self, history: dict[str, Any], dest: Path, stem: str) -> list[Path]:
        """Fetch every file the prompt saved (videos, images) into `dest`, named after the clip."""
        saved = []
        for node_out in history.get("outputs", {}).values():
            for kind in ("images", "gifs", "videos", "video"):
                for item in node_out.get(kind, []) or []:
                    if not isinstance(item, dict) or item.get("type") != "output":
                        continue
                    r = self.http.get(f"{self.address}/view", params={"filename": item["filename"],
                                                                       "subfolder": item.get("subfolder", ""),
                                                                       "type": "output"}, timeout=self.timeout)
                    r.raise_for_status()
                    target = dest / f"{stem}__{Path(item['filename']).name}"
                    target.write_bytes(r.content)
                    saved.append(target)
        return saved


def worker(server: Server, jobs: queue.Queue, results: list[Outcome], workflow: dict[str, Any],
           args: argparse.Namespace) -> None:
    """Take clips off the queue until it is empty, editing each on `server`."""
    while True:
        try:
            clip = jobs.get_nowait()
        except queue.Empty:
            return
        outcome = Outcome(clip, server.address)
        start = time.perf_counter()
        try:
            name = server.upload(clip)
            history = server.run(prepare(workflow, name, args.prompt, args.prompt_node), clip.name)
            outcome.outputs = server.download(history, args.out, clip.stem)
            outcome.ok = bool(outcome.outputs)
            if not outcome.ok:
                outcome.error = "the workflow saved no output (add a SaveVideo/SaveImage node)"
        except Exception as exc:  # noqa: BLE001 - one clip's failure is reported, the batch goes on
            outcome.error = str(exc) or type(exc).__name__
        outcome.seconds = time.perf_counter() - start
        print(f"{'done' if outcome.ok else 'FAILED'} {clip.name} on {server.address} in {outcome.seconds:.1f}s"
              + (f": {outcome.error}" if outcome.error else ""), flush=True)
        results.append(outcome)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", type=Path, required=True, help="API-format workflow with one LoadVideo node")
    parser.add_argument("--clips", type=Path, required=True, help="folder of clips to edit")
    parser.add_argument("--out", type=Path, required=True, help="folder for the edited outputs")
    parser.add_argument("--server", action="append", required=True, help="host:port of a ComfyUI server (repeat)")
    parser.add_argument("--prompt", help="replace the text of --prompt-node for every clip")
    parser.add_argument("--prompt-node", help="node id whose 'text' input --prompt replaces")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds without news before giving up")
    args = parser.parse_args(argv)
    try:
        workflow = load_workflow(args.workflow)
        video_node(workflow)
        if args.prompt is not None:
            prepare(workflow, "x.mp4", args.prompt, args.prompt_node)
    except (OSError, ValueError) as exc:
        print(f"batch_edit: {exc}", file=sys.stderr)
        return 2
    clips = sorted(p for p in args.clips.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES) \
        if args.clips.is_dir() else []
    if not clips:
        print(f"batch_edit: no clips ({', '.join(VIDEO_SUFFIXES)}) in {args.clips}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    jobs: queue.Queue = queue.Queue()
    for clip in clips:
        jobs.put(clip)
    results: list[Outcome] = []
    servers = [Server(s, args.timeout) for s in args.server]
    print(f"editing {len(clips)} clip(s) on {len(servers)} server(s)", flush=True)
    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(s, jobs, results, workflow, args)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in results if r.ok]
    print(f"summary: {len(ok)} of {len(clips)} edited in {time.perf_counter() - start:.1f}s")
    for r in sorted(results, key=lambda r: r.clip.name):
        status = f"{len(r.outputs)} file(s)" if r.ok else f"failed: {r.error}"
        print(f"  {r.clip.name}  {r.server}  {r.seconds:.1f}s  {status}")
    return 0 if len(ok) == len(clips) else 1


if __name__ == "__main__":
    sys.exit(main())
