"""Lossless transfer syntax conversion for WADO-RS / C-GET / export (R-A5).

``transcode(src, target)`` re-encodes a whole Part 10 object. Only lossless targets are
offered, and "lossless" is proven, not assumed: after encoding, the result is decoded
and compared with the decoded source (``np.array_equal``); any difference, any encoder
failure and any lossy or unknown target is NotAcceptable (the 406 the client gets when
it insisted on that transfer syntax). Decompressing a lossy source (e.g. JPEG baseline
to Explicit VR Little Endian) is allowed: it adds no loss, and the pixels are compared
like any other.

Attributes stay as they are, SOPInstanceUID included (pydicom's ``generate_instance_uid``
is switched off); the File Meta TransferSyntaxUID, Pixel Data VR/length and, when the
pixels had to be decoded, PhotometricInterpretation (YBR -> RGB as decoded, native
YBR_FULL_422 -> YBR_FULL) and PlanarConfiguration (0) change accordingly. Big endian
sources have their OW/OF/OL/OD/OV values byte-swapped, since pydicom writes binary
values as they were read.
"""
from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.pixels import get_encoder
from pydicom.uid import (UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless,
                         RLELossless)

from pacsd.dicom.pixels import MAX_PIXELS, Source, decode_array, native_bytes
from pacsd.errors import NotAcceptable, PacsdError

_NATIVE_TARGETS = (ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                   DeflatedExplicitVRLittleEndian)
_ENCODED_TARGETS = (RLELossless, JPEG2000Lossless,
                    JPEGLSLossless)  # JPEG-LS: pyjpegls (CharLS); [storage] compress
_SWAP_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _available(uid: str) -> bool:
    try:
        return bool(get_encoder(uid).is_available)
    except Exception:  # noqa: BLE001 - no encoder implemented
        return False


#: Transfer syntaxes :func:`transcode` can produce here (encoders checked at import).
SUPPORTED_TRANSCODE_TARGETS: tuple[str, ...] = tuple(
    str(u) for u in _NATIVE_TARGETS + tuple(t for t in _ENCODED_TARGETS if _available(t)))


def transcode(src: str | os.PathLike | bytes, target_ts: str, *,
              max_pixels: int = MAX_PIXELS) -> bytes:
    """The Part 10 object ``src`` re-encoded in ``target_ts``, bit-exact in its pixels.

    Returns the source bytes unchanged when it already is in ``target_ts``. Raises
    NotAcceptable (target unsupported, lossy, or not bit-exact here), Unprocessable
    (pixels too large for ``max_pixels`` per frame, or undecodable), InvalidDicom.
    """
    target = str(target_ts).strip()
    if target not in SUPPORTED_TRANSCODE_TARGETS:
        raise NotAcceptable(f"Transfer syntax {target[:64]} is not offered for transcoding")
    with Source(src) as s:
        if s.layout.transfer_syntax_uid == target:
            return bytes(s.buf)
        reference = None
        if s.pixel is not None:
            s.check(None, max_pixels)
            reference = decode_array(s, None)
        s.fp.seek(0)
        try:
            ds = dcmread(s.fp)
            out = _encode(ds, s, UID(target), reference)
        except PacsdError:
            raise
        except Exception as exc:  # noqa: BLE001 - encoder/writer failure
            raise NotAcceptable(f"Cannot encode the instance in transfer syntax {target}"
                                ) from exc
        sop = ds.get("SOPInstanceUID")
    _verify(out, target, reference, sop)
    return out


def _encode(ds: Dataset, s: Source, target: UID, reference: np.ndarray | None) -> bytes:
    source_ts = UID(s.layout.transfer_syntax_uid)
    if reference is not None and s.encapsulated:
        ds.decompress(as_rgb=True, generate_instance_uid=False)
    elif not source_ts.is_little_endian:
        _swap_binary(ds, skip_pixel_data=reference is not None)
        if reference is not None and "PixelData" in ds:
            _set_native_pixels(ds, reference)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if target in _ENCODED_TARGETS:
        if reference is None:
            raise NotAcceptable(f"Transfer syntax {target} needs pixel data")
        ds.compress(target, generate_instance_uid=False)
    ds.file_meta.TransferSyntaxUID = target
    _fill_unknown_vrs(ds)
    buf = io.BytesIO()
    # dcmwrite, not save_as: save_as refuses big -> little endian; binary values were
    # swapped above and everything else pydicom re-encodes from decoded values.
    dcmwrite(buf, ds, implicit_vr=target.is_implicit_VR, little_endian=True)
    return buf.getvalue()


def _fill_unknown_vrs(ds: Dataset) -> None:
    """Elements whose VR pydicom could not learn (unknown private tags of a file whose
    header says explicit VR but whose body is implicit) are written as UN: an explicit
    VR encoding needs a VR for every element."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _fill_unknown_vrs(item)
        elif not elem.VR:
            elem.VR = "UN"


def _set_native_pixels(ds: Dataset, arr: np.ndarray) -> None:
    bits = int(ds.BitsAllocated)
    ds.PixelData = native_bytes(arr, bits) + (b"\0" if len(native_bytes(arr, bits)) % 2
                                             else b"")
    ds["PixelData"].VR = "OW" if bits > 8 else "OB"
    if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
        ds.PhotometricInterpretation = "YBR_FULL"  # pydicom expands 4:2:2 when decoding
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        ds.PlanarConfiguration = 0  # decoded arrays are interleaved


def _swap_binary(ds: Dataset, *, skip_pixel_data: bool) -> None:
    """Byte-swap big endian OW/OF/OL/OD/OV values (recursively) for a little endian
    encoding; Pixel Data is re-created from the decoded array instead."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _swap_binary(item, skip_pixel_data=False)
            continue
        size = _SWAP_SIZES.get(elem.VR)
        if size is None or (skip_pixel_data and elem.tag == 0x7FE00010):
            continue
        value = elem.value
        if isinstance(value, bytes) and value and len(value) % size == 0:
            elem.value = np.frombuffer(value, dtype=f">u{size}").astype(
                f"<u{size}").tobytes()


def _verify(out: bytes, target: str, reference: np.ndarray | None, sop: Any) -> None:
    """Decode the result and insist on identical pixels and SOP Instance UID (R-A5)."""
    try:
        with Source(out) as result:
            if result.layout.transfer_syntax_uid != target:
                raise NotAcceptable(f"Transcoding to {target} failed")
            if str(result.ds.get("SOPInstanceUID")) != str(sop):
                raise NotAcceptable(f"Transcoding to {target} changed the instance")
            if reference is None:
                return
            decoded = decode_array(result, None)
    except NotAcceptable:
        raise
    except PacsdError as exc:
        raise NotAcceptable(f"Transcoding to {target} is not verifiable here") from exc
    if decoded.shape != reference.shape or not np.array_equal(decoded, reference):
        raise NotAcceptable(f"Transcoding to {target} is not lossless for this instance")
