"""scripts/link_packages.py, which gives the second ComfyUI venv the first venv's torch by hard links: the real
installed distributions of this venv (jinja2 needs MarkupSafe; torch's closure has its CUDA wheels through extras)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
SITE = Path(sysconfig.get_paths()["purelib"]).resolve()


def _script():
    spec = importlib.util.spec_from_file_location("link_packages", REPO / "scripts" / "link_packages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_closure_follows_dependencies_and_extras() -> None:
    lp = _script()
    dists = lp.installed(SITE)
    names = {lp.canonical(d.metadata["Name"]) for d in lp.closure([Requirement("jinja2")], dists)}
    assert names == {"jinja2", "markupsafe"}
    torch_names = {lp.canonical(d.metadata["Name"]) for d in lp.closure([Requirement("torch")], dists)}
    needed = {lp.canonical(Requirement(r).name) for r in metadata.requires("torch") or []
              if Requirement(r).marker is None or Requirement(r).marker.evaluate({"extra": ""})}
    assert {"torch", "filelock", "sympy", "mpmath"} <= torch_names
    assert needed & set(dists) <= torch_names
    assert "pytest" not in torch_names


def test_links_files_that_import_from_the_other_folder(tmp_path: Path) -> None:
    dst = tmp_path / "site"
    dst.mkdir()
    version = metadata.version("jinja2")
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "link_packages.py"), str(SITE), str(dst),
                          f"jinja2=={version}"], capture_output=True, text=True, check=True)
    assert "2 distributions" in run.stderr
    lp = _script()
    assert set(lp.installed(dst)) == {"jinja2", "markupsafe"}
    src_init = SITE / "jinja2" / "__init__.py"
    dst_init = dst / "jinja2" / "__init__.py"
    if src_init.stat().st_dev == dst_init.stat().st_dev:
        assert src_init.stat().st_ino == dst_init.stat().st_ino, "same filesystem: expected a hard link"
    out = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {str(dst)!r}); "
                          "import jinja2, markupsafe; print(jinja2.__file__); print(markupsafe.__file__)"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(p).is_relative_to(dst) for p in out)
    again = subprocess.run([sys.executable, str(REPO / "scripts" / "link_packages.py"), str(SITE), str(dst),
                            f"jinja2=={version}"], capture_output=True, text=True, check=True)
    assert "0 distributions" in again.stderr


def test_wrong_version_links_nothing(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "link_packages.py"), str(SITE), str(tmp_path),
                          "jinja2==0.0.1"], capture_output=True, text=True, check=True)
    assert "nothing linked" in run.stderr
    assert not any(tmp_path.iterdir())
