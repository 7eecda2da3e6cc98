"""Image encoding for upload."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from common.schemas import OutputFormat


def encode_image(
    pixels: np.ndarray,
    output_format: OutputFormat,
    *,
    png_compress_level: int = 6,
    quality: int = 90,
) -> bytes:
    """Encode an HxWx3 uint8 array as PNG, JPEG or WebP."""
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    if output_format is OutputFormat.PNG:
        image.save(buffer, format="PNG", compress_level=png_compress_level)
    elif output_format is OutputFormat.JPEG:
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="WEBP", quality=quality)
    return buffer.getvalue()


def extension(output_format: OutputFormat) -> str:
    return "jpg" if output_format is OutputFormat.JPEG else output_format.value
