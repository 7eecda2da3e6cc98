from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from common.schemas import OutputFormat
from worker.encode import encode_image, extension


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_round_trip(fmt: OutputFormat) -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    decoded = Image.open(io.BytesIO(encode_image(pixels, fmt)))
    assert decoded.size == (80, 48)
    assert decoded.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt.value]
    if fmt is OutputFormat.PNG:
        assert np.array_equal(np.asarray(decoded), pixels)  # lossless
    assert extension(fmt) in {"png", "jpg", "webp"}
