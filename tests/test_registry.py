"""Registry-ready: metadata the Comfy registry reads, one list of dependencies, a packed zip that holds what a user
needs, `comfy node validate` clean, and `comfy node install` from a local git URL through ComfyUI-Manager into a
real ComfyUI whose server then lists the pack's nodes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from comfy_server import ComfyServer
from conftest import comfy_dir

REPO = Path(__file__).resolve().parents[1]
COMFY_CLI = Path(sys.executable).with_name("comfy")
PACK_LIMIT = 5 * 1024 * 1024


def _requirement_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_metadata_the_registry_reads():
    project, comfy = _pyproject()["project"], _pyproject()["tool"]["comfy"]
    assert project["urls"]["Repository"].startswith("https://")
    assert project["license"] == {"file": "LICENSE"}
    assert "Apache License" in (REPO / "LICENSE").read_text() and "Version 2.0" in (REPO / "LICENSE").read_text()
    assert any(c.startswith("License :: OSI Approved") for c in project["classifiers"])
    assert any(c.startswith("Environment :: GPU") for c in project["classifiers"])
    assert comfy["Icon"].startswith("https://") and comfy["Icon"].endswith("docs/icon.png")
    assert (REPO / "docs" / "icon.png").is_file(), "run scripts/make_icon.py"
    assert project["version"] and comfy["PublisherId"] and comfy["DisplayName"]


def test_pyproject_and_requirements_list_the_same_dependencies():
    assert _pyproject()["project"]["dependencies"] == _requirement_lines(REPO / "requirements.txt")
    assert not any(re.match(r"torch\b", d) for d in _requirement_lines(REPO / "requirements.txt")), \
        "torch comes from ComfyUI's environment"


def _env(tmp_path: Path) -> dict[str, str]:
    """comfy-cli writes its config under HOME: keep it in a scratch folder."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}


def _snapshot(tmp_path: Path, name: str = "ComfyUI-EditCtrl") -> Path:
    """A git repository holding the files a commit of this tree would hold (tracked + untracked-not-ignored)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           check=True, capture_output=True).stdout.decode().split("\0")
    dest = tmp_path / name
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "snapshot"], cwd=dest, check=True)
    return dest


def _comfy(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(COMFY_CLI), "--skip-prompt", "--no-enable-telemetry", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not COMFY_CLI.is_file():
        pytest.skip(f"comfy-cli is not installed next to {sys.executable} (scripts/setup.sh installs it)")
    return _snapshot(tmp_path_factory.mktemp("snapshot"))


def test_comfy_node_validate_is_clean(snapshot: Path, tmp_path: Path):
    done = _comfy(["node", "validate"], snapshot, _env(tmp_path))
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "All validation checks passed" in out, out


def test_packed_zip_holds_what_a_user_needs_and_nothing_else(snapshot: Path, tmp_path: Path):
    done = _comfy(["node", "pack"], snapshot, _env(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    archive = snapshot / "node.zip"
    assert archive.is_file(), done.stdout
    names = zipfile.ZipFile(archive).namelist()
    size = archive.stat().st_size
    print(f"packed zip: {size / 1e6:.2f} MB, {len(names)} files")
    assert size <= PACK_LIMIT, f"{size} bytes"
    for needed in ("__init__.py", "pyproject.toml", "requirements.txt", "LICENSE", "README.md",
                   "nodes/edit_nodes.py", "editctrl_core/edit/sampler.py", "editctrl_core/presets/tiny.json",
                   "weights/editctrl_tiny.safetensors", "graphs/editctrl_demo.api.json"):
        assert needed in names, needed
    for folder in ("tests/", "training/", "benchmarks/", "docs/", ".ci/"):
        assert not any(n.startswith(folder) for n in names), folder


def test_comfy_node_install_from_a_local_git_url_registers_the_nodes(snapshot: Path, tmp_path: Path):
    """ComfyUI-Manager rejects file:/// (empty host) but takes file://localhost/…; comfy-cli exits 0 even when an
    install fails, so the installed folder and the live server's node list are what is checked."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    workspace = tmp_path / "ComfyUI"
    shutil.copytree(comfy_dir(), workspace, symlinks=True,
                    ignore=lambda d, names: ["ComfyUI-EditCtrl"] if Path(d).name == "custom_nodes" else [])
    done = _comfy(["--workspace", str(workspace), "node", "install", "--no-deps", "--mode", "local",
                   "--exit-on-fail", f"file://localhost{snapshot}"], tmp_path, _env(tmp_path))
    installed = workspace / "custom_nodes" / "ComfyUI-EditCtrl"
    assert (installed / "__init__.py").is_file(), done.stdout[-2000:] + done.stderr[-2000:]
    with ComfyServer(tmp_path / "server", workspace, python=sys.executable) as server:
        info = server.object_info()
    assert {"EditCtrlSampler", "EditCtrlVAEEncode", "EditCtrlModelLoader"} <= set(info)
