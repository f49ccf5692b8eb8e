"""Reading radiograph files into one channel of float intensities in [0, 1].

`load_image` reads PNG, JPEG and whatever else Pillow opens (8 or 16 bit, grayscale or colour;
colour becomes ITU-R 601 luma, so three equal channels give that channel back) and DICOM through
the optional pydicom (``pip install 'cxr_jax[dicom]'``); compressed DICOM transfer syntaxes also
need a decoder plugin (Pillow covers JPEG baseline). Stored values are divided by their full range
(``2**bits - 1`` for unsigned integers, ``BitsStored`` for DICOM), without windowing, as
TorchXRayVision does. A ``MONOCHROME1`` image, by its DICOM header or the ``photometric`` argument,
is inverted (``x -> 1 - x``) so that 1 is always white as displayed. EXIF orientation is ignored.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["PHOTOMETRICS", "load_image"]

PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
_DICOM_INSTALL = "pip install 'cxr_jax[dicom]'"


def _is_dicom(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM" or path.lower().endswith((".dcm", ".dicom"))


def load_image(path: str | os.PathLike, *, photometric: str | None = None) -> np.ndarray:
    """Decode a radiograph to one channel of float intensities in [0, 1].

    ``x = stored / max_stored`` (``max_stored = 2**bits - 1``), then ``x -> 1 - x`` for
    MONOCHROME1, so 0 is black and 1 white as a radiologist sees the film.

    Args:
      path: a PNG/JPEG/... file Pillow can read, or a DICOM file (recognised by its ``DICM``
        preamble or a .dcm/.dicom name).
      photometric: "MONOCHROME1" or "MONOCHROME2" to override the file's own interpretation
        (DICOM header; MONOCHROME2 for other formats), e.g. from ``Record.photometric``; None
        uses the file's.

    Returns:
      float32 array [H, W] in [0, 1].

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file cannot be decoded (names the file and the problem).
      ImportError: a DICOM file and pydicom, or the decoder its compression needs, is missing
        (the message names the missing decoder and the extra to install).
    """
    path = os.fspath(path)
    if photometric is not None:
        photometric = str(photometric).strip().upper()
        if photometric not in PHOTOMETRICS:
            raise ValueError(f"photometric={photometric!r}; choose one of {PHOTOMETRICS} or None")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file {path!r} does not exist")
    if _is_dicom(path):
        x, own = _load_dicom(path)
    else:
        x, own = _load_pil(path), "MONOCHROME2"
    if (photometric or own) == "MONOCHROME1":
        x = 1.0 - x
    return np.ascontiguousarray(x, dtype=np.float32)


def _load_pil(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            return _pil_to_unit(im, path)
    except UnidentifiedImageError as e:
        raise ValueError(f"cannot decode image {path!r}: not an image format Pillow "
                         f"recognises ({e})") from e
    except (OSError, SyntaxError, EOFError) as e:
        raise ValueError(f"cannot decode image {path!r}: {e} (truncated or corrupt file?)") from e


def _pil_to_unit(im: Image.Image, path: str) -> np.ndarray:
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.float32)
    if mode == "L":
        return np.asarray(im, dtype=np.float32) / 255.0
    if mode == "LA":
        return np.asarray(im.getchannel("L"), dtype=np.float32) / 255.0
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.float32) / 65535.0
    if mode == "I":
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"cannot decode image {path!r}: 32-bit integer pixels outside "
                             "[0, 65535]; convert it to 8- or 16-bit first")
        return a.astype(np.float32) / 65535.0
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        if a.size and (not np.isfinite(a).all() or a.min() < 0 or a.max() > 1):
            raise ValueError(f"cannot decode image {path!r}: floating-point pixels outside "
                             "[0, 1]; rescale it to [0, 1] first")
        return a
    # Colour (RGB, RGBA, P, CMYK, YCbCr, ...): ITU-R 601 luma; identical channels map to themselves.
    return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def _load_dicom(path: str) -> tuple[np.ndarray, str]:
    try:
        import pydicom
    except ImportError as e:
        raise ImportError(f"{path!r} is a DICOM file; decoding DICOM needs the optional decoder "
                          f"pydicom, which is not installed. Install the extra: "
                          f"{_DICOM_INSTALL}") from e
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # pydicom raises InvalidDicomError, OSError, struct errors, ...
        raise ValueError(f"cannot read DICOM file {path!r}: {e}") from e
    if "PixelData" not in ds:
        raise ValueError(f"cannot decode DICOM file {path!r}: it has no pixel data")
    try:
        a = ds.pixel_array
    except (RuntimeError, NotImplementedError) as e:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = f"{ts.name} ({ts})" if ts is not None else "an unknown transfer syntax"
        raise ImportError(f"cannot decode DICOM file {path!r}: its pixel data is compressed as "
                          f"{name} and no installed decoder handles it. JPEG baseline needs "
                          f"Pillow ({_DICOM_INSTALL}); JPEG 2000 and JPEG-LS need pylibjpeg "
                          f"or GDCM. pydicom said: {e}") from e
    except Exception as e:
        raise ValueError(f"cannot decode DICOM file {path!r}: {e}") from e
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ValueError(f"cannot decode DICOM file {path!r}: {ds.SamplesPerPixel} samples per "
                         "pixel; chest radiographs have one")
    if a.ndim == 3:
        raise ValueError(f"cannot decode DICOM file {path!r}: it has {a.shape[0]} frames; "
                         "expected one")
    bits = int(ds.get("BitsStored", a.dtype.itemsize * 8))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        lo, hi = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    else:
        lo, hi = 0.0, 2.0 ** bits - 1
    x = (a.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    phot = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if phot not in PHOTOMETRICS:
        raise ValueError(f"cannot decode DICOM file {path!r}: PhotometricInterpretation "
                         f"{phot!r} is not MONOCHROME1/MONOCHROME2")
    return np.clip(x, 0.0, 1.0), phot
