"""Assemble the training images of the default model `ddnm-small-32` from Python packages.

Every image is taken from a package (no other download): the `skimage.data` images, and four
natural colour photographs from scikit-learn (`china`, `flower`), matplotlib (`grace_hopper`) and
the SciPy 1.9.3 wheel (`face`, read from the wheel file, as later SciPy releases download it).
Each is written as PNG at several scales (box-filtered to a long side of 80 to 400 pixels), so
that 32 x 32 crops see both texture and whole objects. Colour images get more scales than grey
ones (written as RGB), so that most crops carry colour: the model also serves colorization. The
held-out images (astronaut, coffee, chelsea) are never written: they are the evaluation set of
bench/quality.py.

    python data/assemble.py OUT_DIR                          # phase 1: skimage.data only
    pip install scikit-learn matplotlib                      # phase 2 adds the photographs
    pip download scipy==1.9.3 --no-deps --only-binary :all: --python-version 3.11 -d WHEELS
    python data/assemble.py OUT_DIR --photographs WHEELS/scipy-1.9.3-*.whl
"""

from __future__ import annotations

import argparse
import bz2
import zipfile
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
# name -> licence, as the providing package states it
PHOTOGRAPHS = {
    "china": "CC BY 2.0 (danielbuechele, Flickr; scikit-learn sample image)",
    "flower": "CC BY 2.0 (vultilion, Flickr; scikit-learn sample image)",
    "grace_hopper": "public domain (U.S. Navy; matplotlib sample data)",
    "face": "public domain (public-domain-image.com; scipy.misc.face of SciPy 1.9.3)",
}
HELD_OUT = ("astronaut", "coffee", "chelsea")
COLOUR_LONG_SIDES = (400, 320, 240, 160, 120, 80)
GREY_LONG_SIDES = (320, 160)


def rgb(name: str) -> np.ndarray:
    """The skimage.data image `name` as (H, W, 3) uint8."""
    image = getattr(skimage.data, name)()
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


def photograph(name: str, scipy_wheel: Path) -> np.ndarray:
    """The natural photograph `name` of PHOTOGRAPHS as (H, W, 3) uint8."""
    if name == "face":  # scipy/misc/face.dat: bz2-compressed raw RGB, 768 x 1024
        with zipfile.ZipFile(scipy_wheel) as wheel:
            raw = bz2.decompress(wheel.read("scipy/misc/face.dat"))
        return np.frombuffer(raw, np.uint8).reshape(768, 1024, 3)
    if name == "grace_hopper":
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            return np.asarray(Image.open(f).convert("RGB"))
    from sklearn.datasets import load_sample_image

    return load_sample_image(f"{name}.jpg")


def main(out: Path, scipy_wheel: Path | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    sources = {name: lambda n=name: rgb(n) for name in TRAINING_IMAGES}
    if scipy_wheel is not None:
        sources |= {name: lambda n=name: photograph(n, scipy_wheel) for name in PHOTOGRAPHS}
    for name, load in sources.items():
        array = load()
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write the PNGs into")
    parser.add_argument(
        "--photographs",
        type=Path,
        metavar="SCIPY_WHEEL",
        help="also write the four photographs (phase 2 of the default model), `face` read from "
        "this SciPy 1.9.3 wheel",
    )
    args = parser.parse_args()
    main(args.out, args.photographs)
