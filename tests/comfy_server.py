"""Drive a real, headless ComfyUI server over HTTP and WebSocket, the way user pipelines do.

Typical use::

    with ComfyServer(base_dir, comfy_dir, model_paths={"loras": "/tmp/loras"}) as server:
        with server.client() as c:              # the WebSocket is open before anything is queued
            pid = c.queue(api_prompt)
            events = c.wait(pid, on_event=print)
        files = server.output_files(pid)

Only 127.0.0.1 is ever contacted; proxies from the environment are ignored.
"""

from __future__ import annotations

import atexit
import json
import mimetypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import websocket

HOST = "127.0.0.1"
#: WebSocket message types that end a prompt's run.
TERMINAL_ERROR_TYPES = ("execution_error", "execution_interrupted")
#: Inputs of EditCtrl Load Text Encoder building its built-in tiny preset on the CPU (the test workflows' encoder).
TINY_TEXT_LOADER = {"text_encoder": "(tiny preset)", "connectors": "(from text encoder)",
                    "tokenizer": "(from text encoder)", "preset": "auto", "device": "cpu", "dtype": "auto",
                    "offload_after_encode": False, "max_length": 0}
#: WebSocket message types collected by default (others, e.g. `status`, are skipped).
DEFAULT_EVENT_TYPES = (
    "execution_start",
    "execution_cached",
    "executing",
    "progress",
    "executed",
    "execution_success",
    "execution_error",
    "execution_interrupted",
)


class ComfyError(RuntimeError):
    """Base class of the errors raised by this module."""


class ServerStartError(ComfyError):
    """The server process exited or did not answer in time; the message carries the log tail."""


class PromptRejected(ComfyError):
    """POST /prompt answered an HTTP error (400: validation failed); `body` holds the JSON answer."""

    def __init__(self, status: int, body: Any) -> None:
        """Keep the HTTP status and the decoded body (`node_errors`, `error`)."""
        self.status = status
        self.body = body
        self.error: dict[str, Any] = body.get("error", {}) if isinstance(body, dict) else {}
        self.node_errors: dict[str, Any] = body.get("node_errors", {}) if isinstance(body, dict) else {}
        super().__init__(f"HTTP {status} from /prompt: {self._summary()}")

    def _summary(self) -> str:
        """One line per node error, after the top-level message."""
        if not isinstance(self.body, dict):
            return str(self.body)[:2000]
        lines = [f"{self.error.get('message', '')} {self.error.get('details', '')}".strip()]
        for node_id, err in self.node_errors.items():
            for e in err.get("errors", []):
                lines.append(f"node {node_id} ({err.get('class_type')}): {e.get('message')}: {e.get('details')}")
        return "\n".join(lines)


class ExecutionFailed(ComfyError):
    """A queued prompt ended with `execution_error` or `execution_interrupted`."""

    def __init__(self, event: dict[str, Any]) -> None:
        """Build a readable message from the terminal WebSocket event."""
        self.event = event
        data = event.get("data", {})
        self.node_type: str | None = data.get("node_type")
        self.node_id: str | None = data.get("node_id")
        self.exception_message: str = str(data.get("exception_message", "")).strip()
        self.traceback: list[str] = list(data.get("traceback") or [])
        if event.get("type") == "execution_interrupted":
            msg = f"interrupted at node {self.node_id} ({self.node_type})"
        else:
            msg = f"node {self.node_id} ({self.node_type}) failed: {data.get('exception_type', '')}: {self.exception_message}"
        super().__init__(msg)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def comfyui_version(comfy_dir: str | os.PathLike) -> str | None:
    """The version a ComfyUI tree declares (`__version__` in comfyui_version.py, else pyproject.toml), or None."""
    root = Path(comfy_dir)
    for name, pattern in (("comfyui_version.py", r"""^__version__\s*=\s*["']([^"']+)["']"""),
                          ("pyproject.toml", r"""^version\s*=\s*["']([^"']+)["']""")):
        try:
            text = (root / name).read_text(encoding="utf-8")
        except OSError:
            continue
        m = re.search(pattern, text, flags=re.MULTILINE)
        if m:
            return m.group(1)
    return None


def version_tuple(version: str | None) -> tuple[int, ...]:
    """`"0.8.0"` -> (0, 8, 0); the leading digits of each dotted part, up to the first without any; () for None."""
    parts: list[int] = []
    for part in (version or "").split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        parts.append(int(m.group(0)))
    return tuple(parts)


def write_model_paths_yaml(
    path: Path, model_paths: Mapping[str, str | os.PathLike | Sequence[str | os.PathLike]]
) -> Path:
    """Write an extra_model_paths config mapping folder names (`loras`, `LLM`, …) to absolute paths."""
    section: dict[str, Any] = {"is_default": True}
    for name, value in model_paths.items():
        paths = [value] if isinstance(value, (str, os.PathLike)) else list(value)
        section[name] = "\n".join(str(Path(p).resolve()) for p in paths)
    # JSON is valid YAML, and ComfyUI splits multi-path values on newlines.
    path.write_text(json.dumps({"editctrl_tests": section}, indent=2), encoding="utf-8")
    return path


def output_entries(history_entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every `{filename, subfolder, type}` record in a history entry's outputs, with its node id."""
    found: list[dict[str, Any]] = []
    for node_id, out in (history_entry.get("outputs") or {}).items():
        for key, items in out.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and "filename" in item:
                    found.append({**item, "node_id": node_id, "kind": key})
    return found


@dataclass
class RunResult:
    """The outcome of one prompt: its id, the collected WebSocket events and the /history entry."""

    prompt_id: str
    events: list[dict[str, Any]]
    history: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> dict[str, Any] | None:
        """The terminal `execution_error`/`execution_interrupted` event, if any."""
        for ev in self.events:
            if ev["type"] in TERMINAL_ERROR_TYPES:
                return ev
        return None

    @property
    def ok(self) -> bool:
        """True when the run reported success (ws `execution_success` or /history status) and no error."""
        if self.error is not None:
            return False
        return any(ev["type"] == "execution_success" for ev in self.events) or (
            self.history.get("status", {}).get("status_str") == "success"
        )


class ComfyClient:
    """A WebSocket session with a fixed client_id; queue prompts through it to see all their events."""

    def __init__(self, server: ComfyServer, client_id: str | None = None, connect_timeout: float = 10.0) -> None:
        """Remember the server and client id; `connect()` (or `with`) opens the socket."""
        self.server = server
        self.client_id = client_id or uuid.uuid4().hex
        self.connect_timeout = connect_timeout
        self.ws: websocket.WebSocket | None = None
        self.end_reason = ""  # how the last events() ended: "executing", an error type, or "history"

    def connect(self) -> ComfyClient:
        """Open `/ws?clientId=…` (idempotent)."""
        if self.ws is None:
            url = f"ws://{HOST}:{self.server.port}/ws?clientId={self.client_id}"
            self.ws = websocket.create_connection(
                url, timeout=self.connect_timeout, http_no_proxy=[HOST, "localhost"], enable_multithread=True
            )
        return self

    def close(self) -> None:
        """Close the WebSocket."""
        if self.ws is not None:
            try:
                self.ws.close()
            finally:
                self.ws = None

    def __enter__(self) -> ComfyClient:
        """Connect on entry."""
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        """Close on exit."""
        self.close()

    def queue(self, prompt: Mapping[str, Any], extra_data: Mapping[str, Any] | None = None) -> str:
        """POST the API-format prompt under this client_id and return its prompt_id."""
        self.connect()
        return self.server.queue(prompt, client_id=self.client_id, extra_data=extra_data)

    def events(
        self, prompt_id: str, timeout: float = 300.0, types: Sequence[str] | None = DEFAULT_EVENT_TYPES
    ) -> Iterator[dict[str, Any]]:
        """Yield this prompt's events (`{"type", "data"}`) until it is done; TimeoutError after `timeout` s.

        Done means `executing` with `node: null`, `execution_error` or `execution_interrupted`.
        Binary frames (previews) and other prompts' messages are skipped.  If the socket stays silent,
        /history is polled: once it shows the prompt finished, messages still in flight get a few
        seconds to arrive before the iteration ends anyway (`end_reason` tells which way it ended).
        """
        self.connect()
        assert self.ws is not None
        self.end_reason = ""
        deadline = time.monotonic() + timeout
        last_poll = time.monotonic()
        finished_at: float | None = None  # when /history first showed the prompt finished
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"prompt {prompt_id} not finished after {timeout:.0f} s; log tail:\n{self.server.log_tail()}"
                )
            self.ws.settimeout(min(remaining, 1.0))
            try:
                opcode, raw = self.ws.recv_data()
            except websocket.WebSocketTimeoutException:
                now = time.monotonic()
                if finished_at is not None and now - finished_at >= 5.0:
                    self.end_reason = "history"
                    return
                if finished_at is None and now - last_poll >= 2.0:
                    last_poll = now
                    if self.server.history(prompt_id).get("status", {}).get("completed") is not None:
                        finished_at = now
                continue
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            msg = json.loads(raw)
            mtype, data = msg.get("type"), msg.get("data") or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if mtype == "status" or (types is not None and mtype not in types and mtype not in TERMINAL_ERROR_TYPES):
                continue
            if data.get("prompt_id") is None and mtype != "progress":
                continue
            event = {"type": mtype, "data": data}
            yield event
            if mtype in TERMINAL_ERROR_TYPES or (mtype == "executing" and data.get("node") is None):
                self.end_reason = mtype
                return

    def wait(
        self,
        prompt_id: str,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        timeout: float = 300.0,
        types: Sequence[str] | None = DEFAULT_EVENT_TYPES,
    ) -> list[dict[str, Any]]:
        """Collect the prompt's events until done, calling `on_event` for each; return them."""
        collected: list[dict[str, Any]] = []
        for ev in self.events(prompt_id, timeout=timeout, types=types):
            collected.append(ev)
            if on_event is not None:
                on_event(ev)
        return collected

    def run(
        self,
        prompt: Mapping[str, Any],
        on_event: Callable[[dict[str, Any]], None] | None = None,
        timeout: float = 300.0,
        check: bool = True,
    ) -> RunResult:
        """Queue, wait, fetch /history; raise ExecutionFailed on error when `check`."""
        pid = self.queue(prompt)
        events = self.wait(pid, on_event=on_event, timeout=timeout)
        result = RunResult(pid, events, self.server.history(pid))
        if check and result.error is not None:
            raise ExecutionFailed(result.error)
        return result


class ComfyServer:
    """A ComfyUI process (`main.py --cpu` unless cpu=False) with its own port and folders, stopped by process group."""

    def __init__(
        self,
        base_dir: str | os.PathLike,
        comfy_dir: str | os.PathLike,
        *,
        port: int | None = None,
        python: str | os.PathLike = sys.executable,
        model_paths: Mapping[str, str | os.PathLike | Sequence[str | os.PathLike]] | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        disable_api_nodes: bool = True,
        cpu: bool = True,
        startup_timeout: float = 120.0,
        input_dir: str | os.PathLike | None = None,
        output_dir: str | os.PathLike | None = None,
        version: str | None = None,
    ) -> None:
        """Lay out folders under `base_dir`; nothing starts until `start()` (or `with`).

        `version` defaults to the one the ComfyUI tree declares; tests whose expectations differ between
        ComfyUI versions branch on `server.version` / `server.version_info`.
        """
        self.base_dir = Path(base_dir).resolve()
        self.comfy_dir = Path(comfy_dir).resolve()
        if not (self.comfy_dir / "main.py").is_file():
            raise FileNotFoundError(f"no ComfyUI at {self.comfy_dir} (run scripts/setup.sh first)")
        self.version: str | None = version or comfyui_version(self.comfy_dir)
        self.port = port or free_port()
        # absolute but not symlink-resolved: a venv's python must keep its own path
        self.python = os.path.abspath(python) if os.sep in str(python) else str(python)
        self.input_dir = Path(input_dir).resolve() if input_dir else self.base_dir / "input"
        self.output_dir = Path(output_dir).resolve() if output_dir else self.base_dir / "output"
        self.temp_dir = self.base_dir / "temp"  # ComfyUI writes temp files to <temp_dir>/temp
        self.user_dir = self.base_dir / "user"
        self.frontend_dir = self.base_dir / "frontend"
        self.log_path = self.base_dir / "comfyui.log"
        self.models_dir = self.base_dir / "models"  # convention for `model_paths` folders (not created here)
        self.model_paths = dict(model_paths or {})
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.disable_api_nodes = disable_api_nodes
        self.cpu = cpu
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = requests.Session()
        self.http.trust_env = False  # never route 127.0.0.1 through an environment proxy
        self._log_file: Any = None

    @property
    def version_info(self) -> tuple[int, ...]:
        """`version` as a tuple of ints, e.g. (0, 8, 0), for comparisons like `server.version_info >= (0, 8)`."""
        return version_tuple(self.version)

    # ---- lifecycle -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base HTTP URL, e.g. http://127.0.0.1:PORT."""
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        """The command line that starts the server."""
        cmd = [
            self.python, str(self.comfy_dir / "main.py"),
            "--listen", HOST, "--port", str(self.port),
            "--output-directory", str(self.output_dir),
            "--input-directory", str(self.input_dir),
            "--temp-directory", str(self.temp_dir),
            "--user-directory", str(self.user_dir),
            "--front-end-root", str(self.frontend_dir),
            "--database-url", f"sqlite:///{self.user_dir / 'comfyui.db'}",
            "--disable-auto-launch",
            "--preview-method", "none",
        ]  # fmt: skip
        if self.cpu:
            cmd.append("--cpu")
        if self.disable_api_nodes:
            cmd.append("--disable-api-nodes")
        if self.model_paths:
            cmd += ["--extra-model-paths-config", str(self.base_dir / "extra_model_paths.yaml")]
        return cmd + self.extra_args

    def environment(self) -> dict[str, str]:
        """The server's environment: offline hubs, no proxies for localhost, caller's overrides."""
        env = dict(os.environ)
        env.update(
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            DO_NOT_TRACK="1",
            PYTHONUNBUFFERED="1",
            NO_PROXY=f"{HOST},localhost",
            no_proxy=f"{HOST},localhost",
        )
        env.update(self.extra_env)
        return env

    def start(self) -> ComfyServer:
        """Start the process and block until GET /system_stats answers (stops it on failure)."""
        if self.proc is not None:
            return self
        for d in (self.input_dir, self.output_dir, self.temp_dir, self.user_dir, self.frontend_dir):
            d.mkdir(parents=True, exist_ok=True)
        if self.model_paths:
            for value in self.model_paths.values():
                for p in [value] if isinstance(value, (str, os.PathLike)) else value:
                    Path(p).mkdir(parents=True, exist_ok=True)
            write_model_paths_yaml(self.base_dir / "extra_model_paths.yaml", self.model_paths)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command(),
            cwd=str(self.comfy_dir),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self.environment(),
            start_new_session=True,  # own process group: stop() kills it and any children
        )
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        """Poll /system_stats until it answers, the process dies, or the timeout passes."""
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise ServerStartError(f"ComfyUI exited with code {code} during start-up; log tail:\n{self.log_tail()}")
            try:
                if self.http.get(f"{self.url}/system_stats", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.25)
        raise ServerStartError(
            f"ComfyUI did not answer /system_stats within {self.startup_timeout:.0f} s on port {self.port}; "
            f"log tail:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server's process group (SIGTERM, then SIGKILL); safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                pgid = os.getpgid(proc.pid)
            except ProcessLookupError:
                pgid = None
            if pgid is not None and proc.poll() is None:
                try:
                    os.killpg(pgid, signal.SIGTERM)
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(pgid, signal.SIGKILL)
                    proc.wait(timeout=timeout)
                except ProcessLookupError:
                    pass
            if pgid is not None:  # children that outlived the main process
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self.http.close()

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> ComfyServer:
        """Start on entry."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Stop on exit, also after an exception."""
        self.stop()

    def log_text(self) -> str:
        """The whole server log so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the server log."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    # ---- HTTP API --------------------------------------------------------------------------------
    def get(self, path: str, **params: Any) -> requests.Response:
        """GET `path` (raises for HTTP errors)."""
        r = self.http.get(f"{self.url}{path}", params=params or None, timeout=60)
        r.raise_for_status()
        return r

    def post(self, path: str, payload: Any = None) -> requests.Response:
        """POST JSON to `path` (raises for HTTP errors)."""
        r = self.http.post(f"{self.url}{path}", json=payload if payload is not None else {}, timeout=60)
        r.raise_for_status()
        return r

    def system_stats(self) -> dict[str, Any]:
        """GET /system_stats."""
        return self.get("/system_stats").json()

    def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        """GET /object_info (all node definitions) or /object_info/{node_class}."""
        return self.get(f"/object_info/{node_class}" if node_class else "/object_info").json()

    def queue(
        self, prompt: Mapping[str, Any], client_id: str | None = None, extra_data: Mapping[str, Any] | None = None
    ) -> str:
        """POST /prompt; return the prompt_id or raise PromptRejected with the JSON body (node_errors)."""
        payload: dict[str, Any] = {"prompt": prompt}
        if client_id is not None:
            payload["client_id"] = client_id
        if extra_data:
            payload["extra_data"] = dict(extra_data)
        # json.dumps, not requests' json=: a client may send NaN/Infinity literals and the server must cope with them
        r = self.http.post(f"{self.url}/prompt", data=json.dumps(payload), timeout=60,
                           headers={"Content-Type": "application/json"})
        if r.status_code != 200:
            try:
                body: Any = r.json()
            except ValueError:
                body = r.text
            raise PromptRejected(r.status_code, body)
        body = r.json()
        if body.get("node_errors"):
            raise PromptRejected(r.status_code, body)
        return str(body["prompt_id"])

    def history(self, prompt_id: str) -> dict[str, Any]:
        """GET /history/{prompt_id}; the entry for that prompt ({} while it is not finished)."""
        return self.get(f"/history/{prompt_id}").json().get(prompt_id, {})

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:  # noqa: A002 - API name
        """GET /view: the bytes of an output/input/temp file."""
        return self.get("/view", filename=filename, subfolder=subfolder, type=type).content

    def upload_image(
        self,
        path: str | os.PathLike,
        subfolder: str = "",
        type: str = "input",
        overwrite: bool = True,  # noqa: A002
    ) -> dict[str, Any]:
        """POST /upload/image with any file (png, mp4, …); returns `{name, subfolder, type}`."""
        p = Path(path)
        mime = mimetypes.guess_type(p.name)[0] or "application/octet-stream"
        with p.open("rb") as fh:
            r = self.http.post(
                f"{self.url}/upload/image",
                files={"image": (p.name, fh, mime)},
                data={"subfolder": subfolder, "type": type, "overwrite": "true" if overwrite else "false"},
                timeout=300,
            )
        r.raise_for_status()
        return r.json()

    def interrupt(self) -> None:
        """POST /interrupt (stops the running prompt)."""
        self.post("/interrupt")

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """POST /free (unload models, drop caches)."""
        self.post("/free", {"unload_models": unload_models, "free_memory": free_memory})

    def client(self, client_id: str | None = None) -> ComfyClient:
        """A WebSocket client; use as `with server.client() as c: pid = c.queue(p); c.wait(pid)`."""
        return ComfyClient(self, client_id)

    def run(
        self,
        prompt: Mapping[str, Any],
        on_event: Callable[[dict[str, Any]], None] | None = None,
        timeout: float = 300.0,
        check: bool = True,
    ) -> RunResult:
        """Queue one prompt on a fresh client, wait for it and return its RunResult."""
        with self.client() as c:
            return c.run(prompt, on_event=on_event, timeout=timeout, check=check)

    def output_files(
        self, prompt_id_or_history: str | Mapping[str, Any], types: Sequence[str] | None = None
    ) -> list[Path]:
        """Absolute paths of the files a finished prompt wrote (its /history outputs), in order.

        `types` keeps only entries of those folder types ("output", "temp" for previews, "input").
        """
        entry = self.history(prompt_id_or_history) if isinstance(prompt_id_or_history, str) else prompt_id_or_history
        roots = {"output": self.output_dir, "input": self.input_dir, "temp": self.temp_dir / "temp"}
        paths: list[Path] = []
        for item in output_entries(entry):
            if types is not None and item.get("type", "output") not in types:
                continue
            root = roots.get(item.get("type", "output"), self.output_dir)
            p = (root / item.get("subfolder", "") / item["filename"]).resolve()
            if p not in paths:
                paths.append(p)
        return paths
