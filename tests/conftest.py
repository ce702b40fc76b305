"""Shared pytest set-up: offline hubs, repo root on sys.path, one real ComfyUI server per session and ComfyUI version.

The `comfy_server` fixture is parametrized over the ComfyUI versions scripts/setup.sh prepares (`COMFY_VERSIONS`):
every test that uses it runs once against each, with ids `[comfy-0.3.75]` and `[comfy-0.8.0]`.  The servers are
session-scoped per version and pytest groups the tests by version, so one server lives at a time (the first is
stopped before the next starts).  A version that is not set up (0.8.0 needs ../shared/vendor) is skipped with the
reason.  `EDITCTRL_COMFY_VERSIONS=0.3.75` (comma-separated) runs only the versions named.

Tests whose expectations differ between versions branch on `comfy_server.version` / `comfy_server.version_info`,
or restrict themselves with `@pytest.mark.comfy_version("0.8.0", ...)`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

REPO_ROOT = Path(__file__).resolve().parent.parent
for _p in (REPO_ROOT, REPO_ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from comfy_server import ComfyServer, comfyui_version  # noqa: E402

#: Model folders created under the server's base dir and registered through extra_model_paths.
MODEL_FOLDERS = (
    "checkpoints",
    "diffusion_models",
    "loras",
    "editctrl",
    "LLM",
    "sams",
    "text_encoders",
    "upscale_models",
    "vae",
)

#: The ComfyUI versions the end-to-end tests run against (the first is the main venv's, always required).
COMFY_VERSIONS = ("0.3.75", "0.8.0")


def _selected_versions() -> tuple[str, ...]:
    """COMFY_VERSIONS, or the subset named in $EDITCTRL_COMFY_VERSIONS (comma-separated)."""
    raw = os.environ.get("EDITCTRL_COMFY_VERSIONS", "").strip()
    if not raw:
        return COMFY_VERSIONS
    wanted = tuple(v.strip() for v in raw.split(",") if v.strip())
    unknown = [v for v in wanted if v not in COMFY_VERSIONS]
    if unknown:
        raise pytest.UsageError(f"EDITCTRL_COMFY_VERSIONS names {unknown}; known: {', '.join(COMFY_VERSIONS)}")
    return wanted


SELECTED_VERSIONS = _selected_versions()


def cache_dir() -> Path:
    """scripts/setup.sh's cache: $EDITCTRL_CACHE, else .cache under the repo."""
    return Path(os.environ.get("EDITCTRL_CACHE") or REPO_ROOT / ".cache")


def comfy_dir() -> Path:
    """The main ComfyUI tree (0.3.75): $COMFYUI_DIR, else <cache>/comfyui (made by scripts/setup.sh)."""
    d = Path(os.environ.get("COMFYUI_DIR") or cache_dir() / "comfyui")
    if not (d / "main.py").is_file():
        pytest.exit(f"no ComfyUI at {d}: run scripts/setup.sh first", returncode=2)
    return d


@dataclass(frozen=True)
class ComfyInstall:
    """Where one ComfyUI version lives: its tree and the python that runs it, or why it is unavailable."""

    version: str
    comfy_dir: Path | None = None
    python: str | None = None
    skip_reason: str | None = None


def comfy_install(version: str) -> ComfyInstall:
    """The tree and python for `version`; 0.3.75 runs with this interpreter, 0.8.0 with <cache>/venv-0.8.0."""
    if version == "0.3.75":
        return ComfyInstall(version, comfy_dir(), sys.executable)
    if version == "0.8.0":
        tree = Path(os.environ.get("EDITCTRL_COMFY08_DIR") or cache_dir() / "comfyui-0.8.0")
        venv = Path(os.environ.get("EDITCTRL_COMFY08_VENV") or cache_dir() / "venv-0.8.0")
        python = venv / "bin" / "python"
        status_file = cache_dir() / "comfyui-0.8.0.status"
        status = status_file.read_text(encoding="utf-8").strip() if status_file.is_file() else ""
        if status and status != "ready":
            return ComfyInstall(version, skip_reason=f"ComfyUI 0.8.0 not set up ({status_file.name}: {status})")
        problems = []
        if not (tree / "main.py").is_file():
            problems.append(f"no ComfyUI tree at {tree}")
        if not os.access(python, os.X_OK):
            problems.append(f"no venv python at {python}")
        elif not (venv / ".editctrl-stamp").is_file():
            problems.append(f"venv {venv} is not fully installed (no .editctrl-stamp)")
        if not problems and not (tree / "custom_nodes" / "ComfyUI-EditCtrl").exists():
            problems.append(f"the pack is not linked into {tree / 'custom_nodes'}")
        if problems:
            return ComfyInstall(version, skip_reason="ComfyUI 0.8.0 unavailable: " + "; ".join(problems)
                                + " (scripts/setup.sh prepares it from ../shared/vendor/comfyui-0.8.0.tar.gz)")
        found = comfyui_version(tree)
        if found != version:
            return ComfyInstall(version, skip_reason=f"{tree} declares ComfyUI {found}, not {version}")
        # absolute but not symlink-resolved: the venv's python must keep its own path
        return ComfyInstall(version, tree, os.path.abspath(python))
    raise ValueError(f"unknown ComfyUI version {version!r}")


def pytest_configure(config: pytest.Config) -> None:
    """Register the `comfy_version` marker."""
    config.addinivalue_line(
        "markers",
        "comfy_version(*versions, reason=''): run this comfy_server test only on the ComfyUI versions named "
        f"(of {', '.join(COMFY_VERSIONS)}); the others are skipped with the reason",
    )


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say which ComfyUI versions the e2e tests run on (and why any is skipped), and the thread settings."""
    lines = ["threads: " + " ".join(f"{k}={os.environ.get(k, '(unset)')}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"))]
    for version in SELECTED_VERSIONS:
        d = Path(os.environ.get("COMFYUI_DIR") or cache_dir() / "comfyui") if version == "0.3.75" else None
        if d is not None and not (d / "main.py").is_file():
            lines.append(f"comfyui {version}: missing at {d} (run scripts/setup.sh)")
            continue
        inst = comfy_install(version)
        lines.append(f"comfyui {version}: " + (f"SKIPPED - {inst.skip_reason}" if inst.skip_reason
                                              else f"{inst.comfy_dir} with {inst.python}"))
    return lines


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `@pytest.mark.comfy_version(...)` tests on the server versions they do not name."""
    for item in items:
        marker = item.get_closest_marker("comfy_version")
        callspec = getattr(item, "callspec", None)
        if marker is None or callspec is None or "comfy_server" not in callspec.params:
            continue
        version = callspec.params["comfy_server"]
        if version not in marker.args:
            why = marker.kwargs.get("reason") or "version-specific behaviour"
            item.add_marker(pytest.mark.skip(reason=f"only on ComfyUI {', '.join(marker.args)}: {why}"))


@pytest.fixture(scope="session", params=SELECTED_VERSIONS, ids=[f"comfy-{v}" for v in SELECTED_VERSIONS])
def comfy_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """One ComfyUI server per session and version; drop model files under `server.models_dir / <folder>`.

    `server.version` says which ComfyUI it is ("0.3.75", "0.8.0").  The previous version's server is stopped before
    this one starts (pytest finishes a parametrized session fixture before setting it up with the next param).
    """
    inst = comfy_install(request.param)
    if inst.skip_reason:
        pytest.skip(inst.skip_reason)
    assert inst.comfy_dir is not None and inst.python is not None
    base = tmp_path_factory.mktemp(f"comfy_server-{inst.version}")
    models_dir = base / "models"  # == server.models_dir
    server = ComfyServer(
        base,
        inst.comfy_dir,
        python=inst.python,
        model_paths={name: models_dir / name for name in MODEL_FOLDERS},
        # the cross-edit step/encoder caches are on by default only on CUDA: turn them on here so the real-server
        # tests run the path GPU users get (and /free's cache release is checked)
        env={"EDITCTRL_STEP_CACHE": "all"},
    )
    with server:
        yield server
