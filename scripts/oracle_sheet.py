"""Frame sheets of the training-free oracle: source, mask, grey fill, `full`, `training_free`, true background.

    python scripts/oracle_sheet.py --checkpoint out/base_oracle/editctrl_small.safetensors --out docs/oracle

Loads the checkpoint written by ``python -m training.recipes.base_oracle`` (preset detected from it), re-runs the
oracle's first clips with the same settings (training/recipes/base_oracle.py ``OracleSettings``) and writes one PNG
per clip (rows: three frames; columns as above) plus ``sheet.png`` (the middle frame of every clip).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COLUMNS = ("source", "mask", "grey_fill", "full", "training_free", "background")


def _to_uint8(image: torch.Tensor):
    import numpy as np

    return (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy().astype(np.uint8)


def _mask_overlay(frame: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    red = torch.tensor([1.0, 0.1, 0.1])
    return torch.where(mask[..., None] > 0.5, 0.5 * frame + 0.5 * red, frame)


def _cell(item: dict, column: str, index: int) -> torch.Tensor:
    if column == "mask":
        return _mask_overlay(item["source"][index], item["mask"][index])
    return item[column][index]


def _grid(rows: list[list[torch.Tensor]], pad: int = 2) -> torch.Tensor:
    h, w = rows[0][0].shape[:2]
    out = torch.ones(len(rows) * (h + pad) + pad, len(rows[0]) * (w + pad) + pad, 3)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            out[y:y + h, x:x + w] = image
    return out


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    from editctrl_core.loading.models import load_models
    from training.recipes.base_oracle import OracleSettings, run_oracle

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="out/base_oracle/editctrl_small.safetensors")
    parser.add_argument("--out", default="docs/oracle")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--steps", type=int, default=OracleSettings.steps)
    parser.add_argument("--dilation", type=int, default=OracleSettings.dilation)
    parser.add_argument("--cfg", type=float, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_models(args.checkpoint, "auto")
    result = run_oracle(loaded.transformer, loaded.vae, loaded.preset,
                        OracleSettings(clips=args.clips, steps=args.steps, cfg=args.cfg, dilation=args.dilation),
                        keep_frames=args.clips, source=loaded.source)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    middle = []
    for number, item in enumerate(result["frames"]):
        frames = item["source"].shape[0]
        picks = [0, frames // 2, frames - 1]
        rows = [[_cell(item, column, i) for column in COLUMNS] for i in picks]
        Image.fromarray(_to_uint8(_grid(rows))).save(out / f"clip{number}.png", optimize=True)
        middle.append(rows[1])
    Image.fromarray(_to_uint8(_grid(middle))).save(out / "sheet.png", optimize=True)
    summary = result["summary"]
    print("columns:", ", ".join(COLUMNS))
    for name in ("full", "training_free", "grey_fill"):
        print(f"{name:14s} pixel MSE {summary[name]['pixel_mse']:.5f} over {args.clips} clips")
    print(f"wrote {len(middle)} clip sheets and sheet.png to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
