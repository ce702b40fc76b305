"""Draw the pack's registry icon (docs/icon.png): a film strip whose middle frame has its masked region edited."""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 256


def draw_icon() -> Image.Image:
    """A 256×256 RGBA icon: three frames on a film strip, the centre one with a red-outlined edited disc."""
    img = Image.new("RGBA", (SIZE, SIZE), (24, 26, 33, 255))
    d = ImageDraw.Draw(img)
    d.rectangle((0, 40, SIZE, SIZE - 40), fill=(40, 44, 56, 255))
    for x in range(8, SIZE, 24):
        d.rectangle((x, 48, x + 12, 60), fill=(200, 200, 210, 255))
        d.rectangle((x, SIZE - 60, x + 12, SIZE - 48), fill=(200, 200, 210, 255))
    for i, x in enumerate((16, 96, 176)):
        d.rectangle((x, 72, x + 64, SIZE - 72), fill=(70, 120, 170, 255) if i != 1 else (80, 150, 110, 255))
    d.ellipse((108, 104, 156, 152), fill=(240, 200, 60, 255))
    d.rectangle((100, 96, 164, 160), outline=(230, 60, 60, 255), width=4)
    return img


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "icon.png")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    draw_icon().save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
