"""MuLAn instance masks as object-shaped training masks, read through a restricted unpickler.

MuLAn (arXiv 2404.02790) ships annotations as `{image_id}.p.zl`: a zlib-compressed pickle with keys
`captioning`, `background`, `image`, `instances` (each instance: `instance_alpha`, `original_image_mask`,
`inpainted_delta`, `instance_mask`, captions). Pickles can run arbitrary code when loaded, so these files are only
ever read by `RestrictedUnpickler`, which admits plain containers and what numpy needs to rebuild arrays, and
refuses everything else (`UnsafePickleError`) before it can be called.

Licence: MuLAn is CC BY-NC-SA 4.0 (non-commercial, share-alike); the library warns whenever it is used.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import logging
import os
import pickle
import sys
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

try:
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

logger = logging.getLogger(__name__)

LICENCE_WARNING = (
    "MuLAn annotations are licensed CC BY-NC-SA 4.0 (attribution, NON-COMMERCIAL, share-alike): masks derived "
    "from them, and models trained with them, must not be used commercially. See "
    "https://huggingface.co/datasets/mulan-dataset/v1.0"
)
CACHE_FORMAT = "editctrl-mulan-masks/1"

_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
    ("_codecs", "encode"): codecs.encode,
}
for _mod in ("numpy.core", "numpy._core"):
    _ALLOWED_GLOBALS[(f"{_mod}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED_GLOBALS[(f"{_mod}.multiarray", "scalar")] = _multiarray.scalar
    _ALLOWED_GLOBALS[(f"{_mod}.numeric", "_frombuffer")] = _numeric._frombuffer


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references something other than plain containers and numpy arrays."""


class MuLAnFormatError(ValueError):
    """A MuLAn annotation file that cannot be decompressed or does not have the expected structure."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy-array reconstruction helpers and builtin containers."""

    def find_class(self, module: str, name: str) -> Any:
        """Return an allow-listed global; refuse (without importing) anything else."""
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: MuLAn annotations may only contain plain containers "
                "and numpy arrays (the file may be tampered with or not a MuLAn annotation)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        """Persistent ids are never legitimate here."""
        raise UnsafePickleError(f"refusing persistent id {pid!r} in a MuLAn annotation")


def restricted_loads(data: bytes) -> Any:
    """Unpickle bytes with `RestrictedUnpickler` (the only pickle loading in this project)."""
    return RestrictedUnpickler(io.BytesIO(data)).load()


def load_annotation(path: str | os.PathLike, max_bytes: int = 1 << 31) -> dict:
    """Read one `{image_id}.p.zl` annotation: zlib-decompress (bounded), then restricted-unpickle."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        inflater = zlib.decompressobj()
        data = inflater.decompress(raw, max_bytes)
        if inflater.unconsumed_tail:
            raise MuLAnFormatError(f"{path}: decompresses to more than {max_bytes} bytes")
    except zlib.error as e:
        raise MuLAnFormatError(f"{path}: not a zlib-compressed MuLAn annotation ({e})") from e
    try:
        annotation = restricted_loads(data)
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise MuLAnFormatError(f"{path}: corrupt annotation pickle ({e})") from e
    if not isinstance(annotation, dict) or "instances" not in annotation:
        raise MuLAnFormatError(f"{path}: expected a dict with an `instances` entry")
    return annotation


def _alpha_to_unit(alpha: Any, where: str) -> np.ndarray:
    """Instance alpha as float32 [H, W] in [0, 1] (accepts uint8 0..255, bool, float, [H,W,1]/[H,W,4])."""
    if not isinstance(alpha, np.ndarray):
        raise MuLAnFormatError(f"{where}: instance_alpha is {type(alpha).__name__}, expected a numpy array")
    a = alpha
    if a.ndim == 3 and a.shape[-1] in (1, 2, 4):
        a = a[..., -1]
    elif a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise MuLAnFormatError(f"{where}: instance_alpha has shape {a.shape}, expected [H, W]")
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(np.float32) / 255.0
    a = a.astype(np.float32)
    return a / 255.0 if a.size and float(a.max()) > 1.0 else a


def _instances(annotation: dict, where: str) -> list[dict]:
    """The annotation's instances in order (MuLAn stores a dict keyed by index; lists are accepted too)."""
    inst = annotation["instances"]
    if isinstance(inst, dict):
        keys = sorted(inst, key=lambda k: (not isinstance(k, int), k if isinstance(k, int) else str(k)))
        items = [inst[k] for k in keys]
    elif isinstance(inst, (list, tuple)):
        items = list(inst)
    else:
        raise MuLAnFormatError(f"{where}: `instances` is {type(inst).__name__}, expected a dict or list")
    for i, it in enumerate(items):
        if not isinstance(it, dict) or "instance_alpha" not in it:
            raise MuLAnFormatError(f"{where}: instance {i} has no instance_alpha")
    return items


def instance_masks(
    annotation: dict,
    size: tuple[int, int] = (64, 64),
    threshold: float = 0.5,
    min_area: float = 0.01,
    max_area: float = 0.8,
    max_instances: int = 10,
    where: str = "annotation",
) -> list[torch.Tensor]:
    """Binary instance masks (alpha > threshold, area in [min_area, max_area]) resized nearest to `size`."""
    out: list[torch.Tensor] = []
    for i, inst in enumerate(_instances(annotation, where)):
        if len(out) >= max_instances:
            break
        binary = _alpha_to_unit(inst["instance_alpha"], f"{where} instance {i}") > threshold
        area = float(binary.mean()) if binary.size else 0.0
        if not min_area <= area <= max_area:
            continue
        mask = torch.from_numpy(binary.astype(np.uint8))
        if tuple(mask.shape) != tuple(size):
            mask = F.interpolate(mask[None, None].float(), size=tuple(size), mode="nearest")[0, 0]
        mask = mask.bool()
        if mask.any():
            out.append(mask)
    return out


def _warn_licence() -> None:
    """Log and print the MuLAn licence terms."""
    logger.warning(LICENCE_WARNING)
    print(f"WARNING: {LICENCE_WARNING}", file=sys.stderr)


def _fingerprint(files: Iterable[Path], params: dict[str, Any]) -> str:
    """Hash of the annotation files (name, size) and extraction parameters, to validate a cache."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for f in files:
        h.update(f"{f.name}:{f.stat().st_size}\n".encode())
    return h.hexdigest()


class SemanticMaskLibrary:
    """Object-shaped masks from MuLAn instance annotations, sampled as `semantic` training masks."""

    def __init__(
        self,
        masks: torch.Tensor,
        image_ids: list[str],
        size: tuple[int, int],
        warn: bool = True,
    ) -> None:
        """Wrap prepared masks [N, h, w]; use `from_annotations` or `from_cache` to build one."""
        if masks.ndim != 3 or masks.shape[0] != len(image_ids):
            raise ValueError(f"masks {tuple(masks.shape)} do not match {len(image_ids)} image ids")
        self.masks = masks.bool()
        self.image_ids = image_ids
        self.size = tuple(size)
        if warn:
            _warn_licence()

    @classmethod
    def from_annotations(
        cls,
        annotation_dir: str | os.PathLike,
        size: tuple[int, int] = (64, 64),
        threshold: float = 0.5,
        min_area: float = 0.01,
        max_area: float = 0.8,
        max_instances: int = 10,
        cache_path: str | os.PathLike | None = None,
        skip_corrupt: bool = False,
    ) -> SemanticMaskLibrary:
        """Extract masks from every `*.p.zl` under `annotation_dir` (or reuse a matching safetensors cache).

        Unsafe pickles always raise; corrupt files raise unless `skip_corrupt` (then they are counted and logged).
        """
        root = Path(annotation_dir)
        files = sorted(root.rglob("*.p.zl"))
        if not files:
            raise FileNotFoundError(f"no MuLAn *.p.zl annotations under {root}")
        params = {"size": list(size), "threshold": threshold, "min_area": min_area, "max_area": max_area,
                  "max_instances": max_instances}
        fingerprint = _fingerprint(files, params)
        if cache_path is not None and Path(cache_path).is_file():
            cached = cls.from_cache(cache_path, expect_fingerprint=fingerprint)
            if cached is not None:
                return cached
        _warn_licence()
        masks: list[torch.Tensor] = []
        ids: list[str] = []
        skipped = 0
        for f in files:
            image_id = f.name[: -len(".p.zl")]
            try:
                found = instance_masks(load_annotation(f), size, threshold, min_area, max_area, max_instances,
                                       where=str(f))
            except MuLAnFormatError:
                if not skip_corrupt:
                    raise
                skipped += 1
                logger.warning("skipping corrupt MuLAn annotation %s", f)
                continue
            masks.extend(found)
            ids.extend([image_id] * len(found))
        if skipped:
            logger.warning("skipped %d corrupt MuLAn annotations of %d", skipped, len(files))
        stacked = torch.stack(masks) if masks else torch.zeros(0, *size, dtype=torch.bool)
        library = cls(stacked, ids, size, warn=False)
        if cache_path is not None:
            library.save_cache(cache_path, fingerprint)
        return library

    @classmethod
    def from_cache(cls, cache_path: str | os.PathLike, expect_fingerprint: str | None = None,
                   warn: bool = True) -> SemanticMaskLibrary | None:
        """Load a safetensors cache; None when `expect_fingerprint` is given and does not match."""
        path = Path(cache_path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                masks = f.get_tensor("masks")
        except (SafetensorError, OSError) as e:
            raise MuLAnFormatError(f"{path}: unreadable mask cache ({e}); delete it to rebuild") from e
        if meta.get("format") != CACHE_FORMAT:
            raise MuLAnFormatError(f"{path}: not a MuLAn mask cache (format {meta.get('format')!r})")
        if expect_fingerprint is not None and meta.get("fingerprint") != expect_fingerprint:
            logger.info("MuLAn mask cache %s is stale; rebuilding", path)
            return None
        return cls(masks, json.loads(meta["image_ids"]), tuple(json.loads(meta["size"])), warn=warn)

    def save_cache(self, cache_path: str | os.PathLike, fingerprint: str = "") -> Path:
        """Write masks + ids + parameters as safetensors (atomically), with the licence in the metadata."""
        path = Path(cache_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": CACHE_FORMAT, "fingerprint": fingerprint, "image_ids": json.dumps(self.image_ids),
                "size": json.dumps(list(self.size)), "licence": LICENCE_WARNING}
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            save_file({"masks": self.masks.to(torch.uint8).contiguous()}, str(tmp), metadata=meta)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    def __len__(self) -> int:
        """Number of masks."""
        return int(self.masks.shape[0])

    def sample(self, generator: torch.Generator, size: tuple[int, int] | None = None) -> torch.Tensor:
        """One random mask [h, w] (nearest-resized to `size` when given)."""
        if len(self) == 0:
            raise ValueError("the MuLAn mask library is empty")
        i = int(torch.randint(0, len(self), (), generator=generator))
        mask = self.masks[i]
        if size is not None and tuple(size) != tuple(mask.shape):
            mask = F.interpolate(mask[None, None].float(), size=tuple(size), mode="nearest")[0, 0].bool()
        return mask.clone()
