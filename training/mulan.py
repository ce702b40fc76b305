"""MuLAn instance masks as object-shaped training masks, read through a restricted unpickler.

MuLAn (arXiv 2404.02790) ships annotations as `{image_id}.p.zl`: a zlib-compressed pickle with keys
`captioning`, `background`, `image`, `instances` (each instance: `instance_alpha`, `original_image_mask`,
`inpainted_delta`, `instance_mask`, captions). Pickles can run arbitrary code when loaded, so these files are only
ever read by `RestrictedUnpickler`, which admits plain containers and what numpy needs to rebuild arrays, and
refuses everything else (`UnsafePickleError`) before it can be called. Neither step can be made to allocate more
than the file describes: decompression stops at `decompress_limit` (64x the compressed size, within 16 MiB..1 GiB),
and the allowed constructors only copy bytes the pickle holds (no `bytearray(n)`, `numpy.ndarray(shape)` or object
arrays).

Licence: MuLAn is CC BY-NC-SA 4.0 (non-commercial, share-alike); the library warns whenever it is used.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import pickle
import sys
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open

from editctrl_core.loading.weights_file import save_safetensors

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

MAX_RATIO = 64
MIN_LIMIT = 16 << 20
MAX_BYTES = 1 << 30
CHUNK = 1 << 20
_MAX_DEPTH = 200
_PLAIN_KINDS = "biufcSU"


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references something other than plain containers and numpy arrays."""


class MuLAnFormatError(ValueError):
    """A MuLAn annotation file that cannot be decompressed or does not have the expected structure."""


def _plain_dtype(dtype: Any) -> np.dtype:
    """A fresh copy of a plain numeric/bool/text dtype; anything else (objects, records, tampered) is refused."""
    if not isinstance(dtype, np.dtype):
        raise UnsafePickleError(f"refusing {type(dtype).__name__} where a numpy dtype belongs")
    if dtype.kind not in _PLAIN_KINDS or dtype.fields is not None or dtype.subdtype is not None or dtype.hasobject:
        raise UnsafePickleError(f"refusing numpy dtype {dtype!r}: MuLAn arrays hold plain numbers, bools or text")
    fresh = np.dtype(dtype.str)
    if fresh != dtype or fresh.flags != dtype.flags or fresh.itemsize != dtype.itemsize:
        raise UnsafePickleError(f"refusing numpy dtype {dtype!r}: its pickled state does not match its type")
    return fresh


def _shape(shape: Any) -> tuple[int, ...]:
    """A pickled array shape: a tuple of non-negative ints."""
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise UnsafePickleError(f"refusing numpy array shape {shape!r}")
    return shape


def _sized(data: Any, shape: tuple[int, ...], dtype: np.dtype) -> bytes | bytearray:
    """`data` when it is bytes of exactly the array's size, so an array never holds more than the file does."""
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError(f"refusing array data of type {type(data).__name__} (object arrays are not loaded)")
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise MuLAnFormatError(f"array data of {len(data)} bytes does not fill shape {shape} of {dtype}")
    return data


class _GuardedArray(np.ndarray):
    """The arrays the unpickler builds: their pickled state is checked before numpy sees it."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _GuardedArray:
        """Refused: `_reconstruct` builds these without calling it."""
        raise UnsafePickleError("refusing a direct numpy.ndarray(...) call (it allocates whatever size it is given)")

    def __setstate__(self, state: Any) -> None:
        """numpy's array state, once dtype, shape and data size are checked."""
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafePickleError("refusing a numpy array state that is not (version, shape, dtype, fortran, data)")
        shape, dtype, fortran, data = state[-4:]
        dtype, shape = _plain_dtype(dtype), _shape(shape)
        if not isinstance(fortran, bool):
            raise UnsafePickleError(f"refusing numpy array state with fortran flag {fortran!r}")
        np.ndarray.__setstate__(self, (1, shape, dtype, fortran, _sized(data, shape, dtype)))


class _ArrayType:
    """What `numpy.ndarray` resolves to: a marker only `_reconstruct` accepts."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Refused: ndarray(shape) allocates whatever size the pickle names."""
        raise UnsafePickleError("refusing a direct numpy.ndarray(...) call (it allocates whatever size it is given)")


_ARRAY = _ArrayType()


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> _GuardedArray:
    """numpy's `_reconstruct(ndarray, (0,), b'b')`, how every array pickle starts, and nothing larger."""
    if subtype is not _ARRAY or _shape(shape) != (0,):
        raise UnsafePickleError(f"refusing numpy _reconstruct({subtype!r}, {shape!r}): array pickles start empty and "
                                "are filled from the file's bytes")
    return _multiarray._reconstruct(_GuardedArray, (0,), b"b")


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> _GuardedArray:
    """numpy's protocol-5 array constructor over bytes the file holds, with a checked dtype and shape."""
    dtype, shape = _plain_dtype(dtype), _shape(shape)
    if order not in ("C", "F"):
        raise UnsafePickleError(f"refusing array order {order!r}")
    return _numeric._frombuffer(_sized(buf, shape, dtype), dtype, shape, order).view(_GuardedArray)


def _scalar(dtype: Any, data: Any = None) -> Any:
    """A numpy scalar from exactly itemsize bytes."""
    dtype = _plain_dtype(dtype)
    return _multiarray.scalar(dtype, _sized(data, (), dtype))


def _dtype(obj: Any, align: bool = False, copy: bool = False) -> np.dtype:
    """`numpy.dtype(type_string, align, copy)`, refused unless the result is plain."""
    if not isinstance(obj, str) or not isinstance(align, bool) or not isinstance(copy, bool):
        raise UnsafePickleError(f"refusing numpy.dtype({obj!r}, {align!r}, {copy!r}): only type strings are loaded")
    try:
        dtype = np.dtype(obj, align=align, copy=copy)
    except (TypeError, ValueError) as e:
        raise MuLAnFormatError(f"bad numpy dtype {obj!r} ({e})") from None
    _plain_dtype(dtype)
    return dtype  # the copy the pickle's state (byte order) is applied to; checked again wherever it is used


def _bytearray(source: Any = b"") -> bytearray:
    """`bytearray(bytes)` as pickle protocols 0-4 write it; `bytearray(n)`, n zero bytes of any size, is refused."""
    if not isinstance(source, (bytes, bytearray)):
        raise UnsafePickleError(f"refusing bytearray({type(source).__name__}): only a copy of bytes in the file is "
                                "loaded (bytearray(n) would allocate n bytes)")
    return bytearray(source)


def _bytes(*args: Any) -> bytes:
    """`bytes()`, how pickle protocols 0-2 store empty bytes; `bytes(n)` (n zero bytes) is refused."""
    if args:
        raise UnsafePickleError("refusing bytes(...) with arguments: only bytes() (empty) is loaded")
    return b""


def _encode(text: Any, encoding: Any = "latin1") -> bytes:
    """`_codecs.encode(str, 'latin1')`, how pickle protocols 0-2 store bytes; other codecs are refused."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refusing _codecs.encode(..., {encoding!r}): only latin1 (pickle's bytes) is loaded")
    return text.encode("latin1")


def _complex(real: Any = 0.0, imag: Any = 0.0) -> complex:
    """`complex(real, imag)` of two numbers."""
    if not all(type(v) in (int, float) for v in (real, imag)):
        raise UnsafePickleError("refusing complex(...) of anything but two numbers")
    return complex(real, imag)


def _container(kind: type) -> Callable[..., Any]:
    """`set(list)` / `frozenset(list)` as pickle protocols 0-3 write them."""

    def build(items: Any = ()) -> Any:
        """`kind(items)` of a list or tuple the file holds."""
        if not isinstance(items, (list, tuple)):
            raise UnsafePickleError(f"refusing {kind.__name__}({type(items).__name__})")
        return kind(items)

    return build


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _ARRAY,
    ("numpy", "dtype"): _dtype,
    ("builtins", "set"): _container(set),
    ("builtins", "frozenset"): _container(frozenset),
    ("builtins", "bytearray"): _bytearray,
    ("builtins", "bytes"): _bytes,
    ("builtins", "complex"): _complex,
    ("_codecs", "encode"): _encode,
}
for _mod in ("numpy.core", "numpy._core"):
    _ALLOWED_GLOBALS[(f"{_mod}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED_GLOBALS[(f"{_mod}.multiarray", "scalar")] = _scalar
    _ALLOWED_GLOBALS[(f"{_mod}.numeric", "_frombuffer")] = _frombuffer


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only checked numpy-array helpers and builtin containers.

    Every allowed global is a wrapper that builds at most what the file's own bytes hold: arrays start empty and are
    filled from bytes of exactly their size, with plain (non-object) dtypes; no global can be told to allocate a size.
    """

    def find_class(self, module: str, name: str) -> Any:
        """Return an allow-listed global; refuse (without importing) anything else."""
        if module == "__builtin__":  # protocols 0-2 write Python 2's name
            module = "builtins"
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


def _unguard(obj: Any, seen: dict[int, Any], depth: int = 0) -> Any:
    """`obj` with every `_GuardedArray` replaced by a plain ndarray view (lists/dicts updated in place)."""
    if isinstance(obj, _GuardedArray):
        return obj.view(np.ndarray)
    if not isinstance(obj, (dict, list, tuple)):
        return obj
    if id(obj) in seen:
        return seen[id(obj)]
    if depth > _MAX_DEPTH:
        raise MuLAnFormatError(f"annotation nested deeper than {_MAX_DEPTH} levels")
    if isinstance(obj, dict):
        seen[id(obj)] = obj
        for key, value in obj.items():
            obj[key] = _unguard(value, seen, depth + 1)
        return obj
    if isinstance(obj, list):
        seen[id(obj)] = obj
        obj[:] = [_unguard(v, seen, depth + 1) for v in obj]
        return obj
    out = tuple(_unguard(v, seen, depth + 1) for v in obj)
    seen[id(obj)] = out
    return out


def restricted_loads(data: bytes) -> Any:
    """Unpickle bytes with `RestrictedUnpickler` (the only pickle loading in this project)."""
    return _unguard(RestrictedUnpickler(io.BytesIO(data)).load(), {})


def decompress_limit(compressed_bytes: int, max_ratio: float = MAX_RATIO, max_bytes: int = MAX_BYTES) -> int:
    """Most bytes an annotation of `compressed_bytes` may inflate to: `max_ratio`x, at least 16 MiB, at most
    `max_bytes`. MuLAn files are mostly photographs (zlib ratio ~1-3) plus masks (higher): 64x leaves wide room."""
    return int(min(max_bytes, max(MIN_LIMIT, max_ratio * compressed_bytes)))


def inflate(raw: bytes, limit: int, where: str = "annotation") -> bytes:
    """zlib-decompress `raw` in 1 MiB chunks, refusing (MuLAnFormatError) as soon as the output passes `limit`."""
    inflater = zlib.decompressobj()
    chunks: list[bytes] = []
    total = 0
    pending = raw
    try:
        while not inflater.eof:
            chunk = inflater.decompress(pending, min(CHUNK, limit + 1 - total))
            total += len(chunk)
            if total > limit:
                raise MuLAnFormatError(
                    f"{where}: decompresses to more than {limit:,} bytes ({limit / max(1, len(raw)):.0f}x its "
                    f"{len(raw):,} compressed bytes): not a MuLAn annotation, or a zip bomb; if the file is genuine, "
                    "pass a larger max_ratio / max_bytes to load_annotation")
            chunks.append(chunk)
            pending = inflater.unconsumed_tail
            if not pending and not chunk and not inflater.eof:
                raise MuLAnFormatError(f"{where}: truncated zlib stream (the file was cut short)")
    except zlib.error as e:
        raise MuLAnFormatError(f"{where}: not a zlib-compressed MuLAn annotation ({e})") from e
    return b"".join(chunks)


def load_annotation(path: str | os.PathLike, max_ratio: float = MAX_RATIO, max_bytes: int = MAX_BYTES) -> dict:
    """Read one `{image_id}.p.zl` annotation: zlib-decompress (bounded by `decompress_limit`), restricted-unpickle."""
    path = Path(path)
    raw = path.read_bytes()
    data = inflate(raw, decompress_limit(len(raw), max_ratio, max_bytes), str(path))
    try:
        annotation = restricted_loads(data)
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except MuLAnFormatError as e:
        raise MuLAnFormatError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, RecursionError) as e:
        raise MuLAnFormatError(f"{path}: corrupt annotation pickle ({type(e).__name__}: {e})") from e
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
        meta = {"format": CACHE_FORMAT, "fingerprint": fingerprint, "image_ids": json.dumps(self.image_ids),
                "size": json.dumps(list(self.size)), "licence": LICENCE_WARNING}
        return save_safetensors(cache_path, {"masks": self.masks.to(torch.uint8)}, meta)

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
