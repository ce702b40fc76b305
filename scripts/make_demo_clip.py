"""Write the demo clip: a moving disc over a drifting textured background, with a soft tone as audio."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from editctrl_core.synthetic import make_clip  # noqa: E402
from editctrl_core.video_io import write_video  # noqa: E402


def main() -> None:
    """Parse arguments and write the clip (25 frames at 128x192, 24 fps, 1 s of 440 Hz audio by default)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output", type=Path)
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    clip = make_clip(args.frames, args.height, args.width, seed=args.seed)
    rate = 44100
    t = np.arange(int(rate * args.frames / 24)) / rate
    tone = (0.2 * np.sin(2 * math.pi * 440 * t)).astype(np.float32)
    write_video(args.output, clip.frames, fps=24, audio=(np.stack([tone, tone]), rate))
    print(args.output.resolve())


if __name__ == "__main__":
    main()
