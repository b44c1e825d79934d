"""Reading and writing images for the command line: PNG/JPEG (scikit-image) and TIFF (tifffile).

Values keep their units: an 8-bit PNG is read as floats in ``[0, 255]`` and written back as
``uint8`` after rounding and clipping to the dtype's range, so ``sigma`` is given in the file's
units (e.g. 25 for an 8-bit image).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["read_image", "write_image", "guess_channel_axis", "to_unit"]

_TIFF = {".tif", ".tiff"}


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as an array of its stored dtype.

    Parameters
    ----------
    path : str or pathlib.Path
        PNG, JPEG or TIFF file.

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        A folder, or a file that cannot be decoded as an image (not an image, truncated,
        unsupported format), or one that holds no numeric pixels.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such image: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    try:
        image = _decode(path)
    except (OSError, ValueError, SyntaxError) as exc:  # PIL reports broken PNG chunks as SyntaxError
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        what = "not an image file, damaged or of an unsupported format"
        raise ValueError(f"cannot read {path}: {what} ({reason})") from None
    if image.dtype.kind not in "biuf" or image.size == 0:
        raise ValueError(f"{path} holds no numeric pixels (dtype {image.dtype}, shape {image.shape})")
    return image


def _decode(path: Path) -> np.ndarray:
    if path.suffix.lower() in _TIFF:
        import tifffile

        return tifffile.imread(path)
    from skimage import io

    return np.asarray(io.imread(path))


def guess_channel_axis(image: np.ndarray) -> int | None:
    """``-1`` for ``(H, W, 3|4)`` images, ``None`` for 2-D ones; RGBA drops to RGB by the caller."""
    if image.ndim == 2:
        return None
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        return -1
    raise ValueError(f"cannot tell the channel axis of an image of shape {image.shape}; expected (H, W) or (H, W, 3|4)")


def write_image(path: str | Path, image: np.ndarray, dtype: np.dtype | type) -> None:
    """Write ``image`` converted to ``dtype`` (integers: rounded and clipped to their range)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(dtype)
    out = np.asarray(image)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        out = np.clip(np.round(out), info.min, info.max).astype(dtype)
    else:
        out = out.astype(dtype)
    if path.suffix.lower() in _TIFF:
        import tifffile

        tifffile.imwrite(path, out)
        return
    if not np.issubdtype(dtype, np.integer):
        raise ValueError(f"{path.suffix} files store integers; write float images as .tif")
    from skimage import io

    io.imsave(path, out, check_contrast=False)


def to_unit(image: np.ndarray) -> tuple[np.ndarray, float]:
    """Float32 copy scaled to ``[0, 1]`` for integer dtypes, and the factor that maps it back
    (the dtype's maximum, or 1 for float images)."""
    if image.dtype.kind in "ui":
        peak = float(np.iinfo(image.dtype).max)
        return image.astype(np.float32) / peak, peak
    return image.astype(np.float32), 1.0
