"""Checks on uploaded images, done with Pillow alone: a readable, complete PNG / JPEG / WebP of
bounded size with 8 bits per channel. What is kept is the decoded pixels re-encoded as PNG
(lossless; trailing bytes, metadata and further frames dropped), which the worker decodes again
when it runs the job. Any failure of the decoder, whatever Pillow raises, is the client's file:
a 4xx naming the field, never the decoder's own message."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

FORMATS = ("PNG", "JPEG", "MPO", "WEBP")  # MPO: a JPEG holding more pictures, as cameras write
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_BIT_DEPTH_AT = 24  # signature (8), IHDR length and type (8), width and height (8)


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
        raise UploadError(
            f"{field}: the image is too large to decode (a decompression bomb)", 413
        ) from err
    except Exception as err:  # Pillow raises many kinds for hostile headers
        raise UploadError(f"{field}: not an image; send a PNG, JPEG or WebP file") from err
    with image:
        _check_header(field, image, data, max_pixels)
        try:
            image.load()
            _, brightest = image.convert("L").getextrema()
            kept = io.BytesIO()
            alpha = "A" in image.getbands() or "transparency" in image.info
            image.convert("RGBA" if alpha else "RGB").save(kept, format="PNG")
        except Image.DecompressionBombError as err:
            raise UploadError(
                f"{field}: the image is too large to decode (a decompression bomb)", 413
            ) from err
        except Exception as err:  # damaged data or metadata, whatever the decoder raises
            raise UploadError(
                f"{field}: the {image.format} file is damaged or truncated; send the complete file"
            ) from err
        width, height = image.size
    return CheckedImage(kept.getvalue(), height, width, has_white=float(brightest) >= 128)  # type: ignore[arg-type]


def _check_header(field: str, image: Image.Image, data: bytes, max_pixels: int) -> None:
    """Format, bit depth and size, from the header alone (before any pixel is decoded)."""
    if image.format not in FORMATS:
        raise UploadError(f"{field}: {image.format} is not accepted; send PNG, JPEG or WebP")
    sixteen_bit_png = (
        data.startswith(PNG_SIGNATURE) and data[PNG_BIT_DEPTH_AT : PNG_BIT_DEPTH_AT + 1] == b"\x10"
    )
    if image.mode.startswith(("I", "F")) or sixteen_bit_png:  # Pillow would clip them to 8 bits
        raise UploadError(
            f"{field}: pixels of more than 8 bits are not accepted; send an 8-bit image"
        )
    width, height = image.size
    if width * height > max_pixels:
        raise UploadError(
            f"{field}: {width}x{height} is over the limit of {max_pixels} pixels", 413
        )
