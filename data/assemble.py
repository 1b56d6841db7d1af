"""Assemble the training images of the default model `ddnm-small-32` from `skimage.data`.

Every image is taken from the scikit-image package (no download) and written as PNG at several
scales (box-filtered to a long side of 80 to 400 pixels), so that 32 x 32 crops see both texture
and whole objects. Colour images get more scales than grey ones (written as RGB), so that most
crops carry colour: the model also serves colorization. The held-out images (astronaut,
coffee, chelsea) are never written: they are the evaluation set of bench/quality.py.

    python data/assemble.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

# name -> licence as stated in the skimage.data docstring
TRAINING_IMAGES = {
    "rocket": "public domain (SpaceX)",
    "retina": "CC0 1.0 (Mikael Häggström, Wikimedia Commons)",
    "hubble_deep_field": "public domain (NASA)",
    "immunohistochemistry": "no known copyright restrictions (CMMI)",
    "camera": "CC0 (Lav Varshney)",
    "brick": "CC0 (CC0Textures)",
    "grass": "CC0 (DeviantArt, linolafett)",
    "gravel": "CC0 (CC0Textures)",
    "coins": "no known copyright restrictions (Brooklyn Museum)",
    "clock": "public domain (Stefan van der Walt)",
    "text": "public domain (Wikipedia)",
    "cell": "CC0",
}
HELD_OUT = ("astronaut", "coffee", "chelsea")
COLOUR_LONG_SIDES = (400, 320, 240, 160, 120, 80)
GREY_LONG_SIDES = (320, 160)


def rgb(name: str) -> np.ndarray:
    """The skimage.data image `name` as (H, W, 3) uint8."""
    image = getattr(skimage.data, name)()
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in TRAINING_IMAGES:
        array = rgb(name)
        image = Image.fromarray(array)
        grey = bool((array == array[..., :1]).all())
        written = 0
        for long_side in GREY_LONG_SIDES if grey else COLOUR_LONG_SIDES:
            scale = min(1.0, long_side / max(image.size))
            size = (round(image.width * scale), round(image.height * scale))
            image.resize(size, Image.Resampling.BOX).save(out / f"{name}_{long_side}.png")
            written += 1
        print(f"{name}: {written} scales, {'grey' if grey else 'colour'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
