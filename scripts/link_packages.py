"""Hard-link installed distributions and their dependency closure from one venv into another.

The second ComfyUI venv needs the same pinned torch as the first; pip would unpack another ~5.6 GB copy, which
filled a CI machine's disk. Hard links share the files (pip unlinks before it overwrites, so neither venv can change
the other's copy); across filesystems the files are copied instead.

Usage: python scripts/link_packages.py SRC_SITE_PACKAGES DST_SITE_PACKAGES torch==2.14.1 torchvision==0.29.1
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # a bare venv: pip's vendored copy is the same library
    from pip._vendor.packaging.requirements import Requirement


def canonical(name: str) -> str:
    """PEP 503 name, so `typing_extensions` and `typing-extensions` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(site: Path) -> dict[str, metadata.Distribution]:
    """The distributions installed in one site-packages folder, by canonical name."""
    return {canonical(d.metadata["Name"]): d for d in metadata.distributions(path=[str(site)])}


def closure(roots: list[Requirement], dists: dict[str, metadata.Distribution]) -> list[metadata.Distribution]:
    """The installed distributions that `roots` need on this interpreter, extras included."""
    found: dict[str, metadata.Distribution] = {}
    expanded: set[tuple[str, str]] = set()
    todo = [(r, "") for r in roots]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonical(req.name)
        dist = dists.get(name)
        if dist is None:
            continue
        found[name] = dist
        for wanted in {"", *req.extras} - {e for n, e in expanded if n == name}:
            expanded.add((name, wanted))
            todo.extend((Requirement(line), wanted) for line in dist.requires or [])
    return list(found.values())


def link_file(src: Path, dst: Path) -> int:
    """Hard-link (or copy across filesystems) one file; its size in bytes, 0 when it was already there."""
    if dst.exists():
        return 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return src.stat().st_size


def link_distribution(dist: metadata.Distribution, src_site: Path, dst_site: Path) -> int:
    """Every file of `dist` that lies inside site-packages (console scripts point at the other venv: left out)."""
    total = 0
    for rel in dist.files or []:
        src = Path(dist.locate_file(rel)).resolve()
        if not src.is_file() or not src.is_relative_to(src_site):
            continue
        total += link_file(src, dst_site / src.relative_to(src_site))
    return total


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    src_site, dst_site = Path(argv[0]).resolve(), Path(argv[1]).resolve()
    roots = [Requirement(a) for a in argv[2:]]
    src, dst = installed(src_site), installed(dst_site)
    for r in roots:
        have = src.get(canonical(r.name))
        if have is None or not r.specifier.contains(have.version, prereleases=True):
            print(f"[link] {r} is not installed in {src_site}: nothing linked, pip installs it", file=sys.stderr)
            return 0
    dists = [d for d in closure(roots, src) if canonical(d.metadata["Name"]) not in dst]
    size = sum(link_distribution(d, src_site, dst_site) for d in dists)
    print(f"[link] {len(dists)} distributions ({size / 2**30:.1f} GB) from {src_site} into {dst_site}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
