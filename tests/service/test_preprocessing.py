"""The contract's preprocessing in-process: the torchvision evaluation pipeline, image modes, EXIF, hostile bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from niff_contract import ImageLimits, Preprocessing, Preprocessor, decode_image
from niff_contract.images import CorruptImage, EmptyImage, ImageTooLarge, UnsupportedImage

pytestmark = pytest.mark.fast

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def expected(image: Image.Image, resize: int, size: int) -> np.ndarray:
    """Resize(resize) + CenterCrop(size) + ToTensor + Normalize, written out independently."""
    w, h = image.size
    new = (resize, resize * h // w) if w <= h else (resize * w // h, resize)
    resized = np.asarray(image.convert("RGB").resize(new, Image.Resampling.BILINEAR), dtype=np.float64) / 255
    top, left = round((new[1] - size) / 2), round((new[0] - size) / 2)
    crop = resized[top : top + size, left : left + size]
    return ((crop - IMAGENET["mean"]) / IMAGENET["std"]).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def preprocessor() -> Preprocessor:
    return Preprocessor(Preprocessing(input_size=32, crop_pct=0.875, **IMAGENET), ImageLimits(max_pixels=10**6))


@pytest.mark.parametrize("size", [(640, 427), (427, 640), (100, 100), (33, 90)])
def test_matches_the_reference_pipeline(preprocessor: Preprocessor, size: tuple[int, int]) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    result = preprocessor(encode(image, "PNG"))
    assert result.shape == (3, 32, 32) and result.dtype == np.float32 and result.flags.c_contiguous
    np.testing.assert_allclose(result, expected(image, resize=36, size=32), atol=1e-5)


def test_exif_orientation_is_applied(preprocessor: Preprocessor) -> None:
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:, :40] = 255  # left half white
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    decoded = decode_image(encode(image, "JPEG", exif=exif, quality=95), ImageLimits(max_pixels=10**6))
    assert decoded.size == (40, 80)
    top, bottom = np.asarray(decoded)[:40].mean(), np.asarray(decoded)[40:].mean()
    assert top > 200 and bottom < 50  # the white left half is now on top


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "1", "CMYK", "I;16"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    digit = load_digits().images[3]  # 8x8 grayscale, values 0..16
    gray = Image.fromarray((digit * 15).astype(np.uint8)).resize((48, 48))
    if mode == "I;16":
        source = Image.fromarray((np.asarray(gray, dtype=np.uint16) * 257).astype(np.uint16))
        assert source.mode == "I;16"
    else:
        source = gray.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode == "I;16" else "PNG"
    decoded = decode_image(encode(source, fmt), ImageLimits(max_pixels=10**6))
    assert decoded.mode == "RGB" and decoded.size == (48, 48)
    if mode in ("L", "LA", "I;16"):
        np.testing.assert_array_equal(np.asarray(decoded)[..., 0], np.asarray(gray))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF"])
def test_allowed_formats_decode(fmt: str) -> None:
    image = Image.fromarray(np.full((20, 30, 3), 128, dtype=np.uint8))
    assert decode_image(encode(image, fmt), ImageLimits(max_pixels=10**6)).size == (30, 20)


def test_other_formats_are_refused() -> None:
    image = Image.fromarray(np.full((20, 30, 3), 128, dtype=np.uint8))
    for fmt in ("GIF", "ICO", "PPM"):
        with pytest.raises(UnsupportedImage, match="not a JPEG, PNG, WebP, BMP or TIFF image"):
            decode_image(encode(image, fmt), ImageLimits(max_pixels=10**6))


def test_pixel_limit_is_checked_before_decoding() -> None:
    # A 6000x6000 white PNG compresses to a few kB; decoding it would take 108 MB.
    data = encode(Image.new("RGB", (6000, 6000), "white"), "PNG")
    assert len(data) < 200_000
    with pytest.raises(ImageTooLarge, match="6000x6000 = 36000000 pixels; the limit is 1000000"):
        decode_image(data, ImageLimits(max_pixels=10**6))


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_hostile_bytes_are_client_errors() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    for fmt in ("JPEG", "PNG", "WEBP", "BMP", "TIFF"):
        data = encode(Image.fromarray(pixels), fmt)
        for cut in (len(data) // 2, 40):  # inside the pixel data, inside the header
            with pytest.raises(CorruptImage, match=f"{fmt} image is truncated or corrupt"):
                decode_image(data[:cut], ImageLimits(max_pixels=10**6))
    with pytest.raises(EmptyImage, match="empty"):
        decode_image(b"", ImageLimits(max_pixels=10**6))
    with pytest.raises(UnsupportedImage):
        decode_image(b"GET / HTTP/1.1\r\n\r\n" * 10, ImageLimits(max_pixels=10**6))
