"""Reading and writing images and masks, with errors that name the file.

Every reader in :mod:`spanlib.data` goes through these functions, so a
missing file, an unreadable or truncated image or an empty mask is reported
the same way everywhere: a :class:`~spanlib.data.sample.DataError` whose
message is ``"<path>: <problem>"``.

Pixel values become float32 in [0, 1] by the range of the stored type: 8-bit
images are divided by 255, 16-bit ones by 65535, raw JSRT films by 4095.
PNGs are written with fixed settings and no timestamp, so the same array
always gives the same bytes.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from spanlib.data.sample import DataError

Size = tuple[int, int]

_GREY_16 = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def parse_size(size: int | tuple[int, int] | None) -> Size | None:
    """Normalise a size argument.

    Args:
        size: ``None`` (keep), one int (square) or ``(height, width)``.

    Returns:
        ``(height, width)`` or ``None``.

    Raises:
        ValueError: for a non-positive size.
    """
    if size is None:
        return None
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return height, width


def _too_large(path: Path, error: Exception) -> DataError:
    """A film whose header claims more pixels than Pillow decodes safely (a decompression bomb or a corrupt header)."""
    limit = Image.MAX_IMAGE_PIXELS
    return DataError(path, f"too large to decode safely ({error}; Pillow's limit is {limit:,} pixels): a corrupt "
                           "header or a decompression bomb; shrink the film or remove it")


@contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    """An image decoded by Pillow, its file closed on exit (GIFs keep theirs open otherwise).

    A header claiming more than Pillow's ``MAX_IMAGE_PIXELS`` (about 89
    million pixels, the point where Pillow itself warns) is refused before
    any pixel is decoded, as a :class:`DataError` naming the file.
    """
    if not path.is_file():
        raise DataError(path, "missing file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise _too_large(path, error) from error
        except (OSError, SyntaxError, ValueError, zlib.error) as error:
            raise DataError(path, f"unreadable or truncated image ({type(error).__name__}: {error})") from error
    with image:
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, zlib.error) as error:
            raise DataError(path, f"unreadable or truncated image ({type(error).__name__}: {error})") from error
        yield image


def _unit_array(path: Path, image: Image.Image, grey: bool) -> np.ndarray:
    """Pixel values of a decoded image as float32 in [0, 1]."""
    if image.mode in _GREY_16:
        array = np.asarray(image)
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise DataError(path, f"pixel values outside 0..65535 in a {image.mode} image")
        # float32 holds every 16-bit value exactly: no float64 copy of a 2048-pixel film
        unit = array.astype(np.float32)
        unit /= np.float32(65535.0)
        return unit
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        if array.size and (not np.isfinite(array).all() or array.min() < 0 or array.max() > 1):
            raise DataError(path, "floating-point image with values outside [0, 1]")
        return array.copy()
    if image.mode != "L":
        image = image.convert("L" if grey or image.mode == "1" else "RGB")
        if image.mode == "RGB" and np.ptp(np.asarray(image).astype(np.int16), axis=2).max(initial=0) == 0:
            image = image.convert("L")
    return np.asarray(image, dtype=np.float32) / 255.0


def read_image(path: str | Path, grey: bool = True) -> np.ndarray:
    """Read an image file into float32 values in [0, 1].

    Args:
        path: a PNG, JPEG, GIF or any other format Pillow reads.
        grey: convert colour images to grey; when ``False`` a colour image
            is returned as ``[H, W, 3]`` (a colour file whose channels are
            all equal still comes back grey).

    Returns:
        float32 ``[H, W]`` (or ``[H, W, 3]``).

    Raises:
        DataError: missing, unreadable or truncated file.
    """
    path = Path(path)
    with _opened(path) as image:
        return _unit_array(path, image, grey)


def read_raw_image(
    path: str | Path,
    shape: Size = (2048, 2048),
    dtype: str = ">u2",
    max_value: int = 4095,
    invert: bool = True,
) -> np.ndarray:
    """Read a headerless raw image (the JSRT ``.IMG`` films).

    JSRT films are 2048 x 2048, 12-bit values stored big-endian in 16 bits,
    with 0 the brightest: ``invert`` turns them the usual way (bone bright).

    Args:
        path: the raw file.
        shape: ``(height, width)`` in pixels.
        dtype: numpy dtype string of one pixel.
        max_value: largest valid value (4095 for 12 bits).
        invert: map ``v`` to ``1 - v / max_value`` instead of ``v / max_value``.

    Returns:
        float32 ``[height, width]`` in [0, 1].

    Raises:
        DataError: missing file, wrong byte count, values above ``max_value``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "missing file")
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    found = path.stat().st_size
    if found != expected:
        what = "truncated raw image" if found < expected else "raw image larger than expected"
        raise DataError(path, f"{what}: expected {expected} bytes for {shape[0]}x{shape[1]} {dtype}, found {found}")
    raw = np.fromfile(path, dtype=dtype).reshape(shape)
    if raw.max(initial=0) > max_value:
        raise DataError(path, f"raw values up to {int(raw.max())} exceed the {max_value} of this format")
    unit = raw.astype(np.float32) / np.float32(max_value)
    return (1.0 - unit if invert else unit).astype(np.float32)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a binary mask (0/255 or 0/1, any format Pillow reads).

    A pixel is foreground when it is above half the mask's maximum, which
    accepts 0/255 and 0/1 masks and tolerates JPEG-like noise.

    Returns:
        bool ``[H, W]``.

    Raises:
        DataError: missing, unreadable or truncated file, or an empty mask.
    """
    path = Path(path)
    with _opened(path) as image:
        if image.mode not in ("L", "1") and image.mode not in _GREY_16:
            image = image.convert("L")
        array = np.asarray(image)
    top = array.max(initial=0)
    if top <= 0:
        raise DataError(path, "empty mask (no foreground pixel)")
    return array > (top / 2)


def image_to_uint(image: np.ndarray, bit_depth: int = 8) -> np.ndarray:
    """Quantise float [0, 1] pixels to 8 or 16 bits (round to nearest)."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    top = 255 if bit_depth == 8 else 65535
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return np.rint(np.clip(image, 0.0, 1.0) * top).astype(dtype)


def write_png(path: str | Path, array: np.ndarray, bit_depth: int = 8) -> Path:
    """Write an image or a mask as PNG with fixed settings (byte-reproducible).

    Args:
        path: destination; parent folders are created.
        array: bool mask (written 0/255), float image in [0, 1] (``[H, W]``
            or ``[H, W, 3]``) or an integer array already quantised.
        bit_depth: 8 or 16 for float grey images; colour images are 8-bit.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype == np.bool_:
        data = array.astype(np.uint8) * np.uint8(255)
    elif np.issubdtype(array.dtype, np.floating):
        data = image_to_uint(array, 8 if array.ndim == 3 else bit_depth)
    else:
        data = array
    Image.fromarray(np.ascontiguousarray(data)).save(path, format="PNG", compress_level=6, optimize=False)
    return path


def resize_image(image: np.ndarray, size: Size) -> np.ndarray:
    """Resize an image with Pillow's antialiased bilinear filter.

    Args:
        image: float32 ``[H, W]`` or ``[H, W, 3]``.
        size: ``(height, width)``.

    Returns:
        float32 image of the new size, clipped to [0, 1].
    """
    if image.shape[:2] == tuple(size):
        return image
    height, width = size
    if image.ndim == 3:
        return np.stack([resize_image(image[..., c], size) for c in range(image.shape[2])], axis=-1)
    resized = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def capped_size(shape: tuple[int, ...], max_side: int | None) -> Size:
    """``(height, width)`` of an image shrunk, aspect kept, so that its longer side is at most ``max_side``.

    An image already small enough (or ``max_side`` None) keeps its size.
    """
    height, width = int(shape[0]), int(shape[1])
    if max_side is None or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_mask(mask: np.ndarray, size: Size) -> np.ndarray:
    """Resize a bool mask by nearest neighbour."""
    if mask.shape == tuple(size):
        return mask
    height, width = size
    resized = Image.fromarray(mask.astype(np.uint8) * np.uint8(255)).resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(resized) > 127


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Downsample by an integer factor, averaging each ``factor x factor`` block."""
    height, width = image.shape[0] // factor, image.shape[1] // factor
    cropped = image[: height * factor, : width * factor]
    return cropped.reshape(height, factor, width, factor).mean(axis=(1, 3), dtype=np.float64).astype(np.float32)
