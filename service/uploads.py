"""Checks on uploaded images, done with Pillow alone: a readable, complete PNG / JPEG / WebP of
bounded size with 8 bits per channel. The worker decodes the same bytes again when it runs the
job."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

FORMATS = ("PNG", "JPEG", "MPO", "WEBP")  # MPO: a JPEG holding more pictures, as cameras write


class UploadError(ValueError):
    """An upload the API refuses; `status_code` is 413 (too large) or 422 (unusable)."""

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class CheckedImage:
    data: bytes
    height: int
    width: int
    has_white: bool  # some pixel is at least mid-grey (for masks: some pixel is known)


def check_image(field: str, data: bytes, max_bytes: int, max_pixels: int) -> CheckedImage:
    """Decode `data` fully; UploadError naming `field` and what to send instead."""
    if not data:
        raise UploadError(f"{field}: the file is empty; send a PNG, JPEG or WebP image")
    if len(data) > max_bytes:
        raise UploadError(f"{field}: {len(data)} bytes is over the limit of {max_bytes}", 413)
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise UploadError(f"{field}: {err}", 413) from err
    except (UnidentifiedImageError, OSError) as err:
        raise UploadError(f"{field}: not an image; send a PNG, JPEG or WebP file") from err
    with image:
        if image.format not in FORMATS:
            raise UploadError(f"{field}: {image.format} is not accepted; send PNG, JPEG or WebP")
        if image.mode.startswith(("I", "F")):  # 16-bit PNGs: Pillow would clip them to 8 bits
            raise UploadError(
                f"{field}: {image.mode} pixels (more than 8 bits) are not accepted; "
                f"send an 8-bit image"
            )
        width, height = image.size
        if width * height > max_pixels:
            raise UploadError(
                f"{field}: {width}x{height} is over the limit of {max_pixels} pixels", 413
            )
        try:
            image.load()
            _, brightest = image.convert("L").getextrema()
        except (OSError, SyntaxError, ValueError) as err:
            raise UploadError(
                f"{field}: the {image.format} file is damaged or truncated ({err}); "
                f"send the complete file"
            ) from err
    return CheckedImage(data, height, width, has_white=float(brightest) >= 128)  # type: ignore[arg-type]
