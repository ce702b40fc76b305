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


def _cell(item: dict, column: str, index: int) -> torch.Tensor:
    from training.recipes.frame_sheet import mask_overlay

    if column == "mask":
        return mask_overlay(item["source"][index], item["mask"][index])
    return item[column][index]


def main(argv: list[str] | None = None) -> int:
    from editctrl_core.loading.models import load_models
    from training.recipes.base_oracle import OracleSettings, run_oracle
    from training.recipes.frame_sheet import grid, save_image

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
        save_image(grid(rows), out / f"clip{number}.png")
        middle.append(rows[1])
    save_image(grid(middle), out / "sheet.png")
    summary = result["summary"]
    print("columns:", ", ".join(COLUMNS))
    for name in ("full", "training_free", "grey_fill"):
        print(f"{name:14s} pixel MSE {summary[name]['pixel_mse']:.5f} over {args.clips} clips")
    print(f"wrote {len(middle)} clip sheets and sheet.png to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
