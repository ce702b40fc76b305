"""Write the demo clip: a moving disc over a drifting textured background, with a soft tone as audio."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from editctrl_core.media.synthetic import write_demo_clip  # noqa: E402


def main() -> None:
    """Parse arguments and write the clip (25 frames at 128x192, 24 fps, with a 440 Hz tone by default)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output", type=Path)
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    print(write_demo_clip(args.output, args.frames, args.height, args.width, args.seed).resolve())


if __name__ == "__main__":
    main()
