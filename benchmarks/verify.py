"""Answer checks: a fast wrong answer scores nothing.

Every check raises :class:`VerificationError` with a short reason. The expected values come
from :class:`benchmarks.dataset.Manifest` (what the target acknowledged) and from the
generator itself (pixel hashes, the image a renderer must show). Checks are strict about
identity (exact UID sets, byte-exact objects and frames, exact counts) and tolerant only
where the standard leaves room: result order, lossy JPEG rendering (correlation with the
expected windowed image), optional attributes a server may omit.
"""
from __future__ import annotations

import io
import json
from typing import Any, Callable, Iterable

import numpy as np

try:  # orjson is a pacsd dependency; the driver also works without it
    import orjson

    def loads(data: bytes) -> Any:
        return orjson.loads(data)
except ImportError:  # pragma: no cover
    def loads(data: bytes) -> Any:
        return json.loads(data)

SOP_INSTANCE_UID = "00080018"
STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
REFERENCED_SOP_SEQ = "00081199"
FAILED_SOP_SEQ = "00081198"
REFERENCED_SOP_INSTANCE = "00081155"
N_STUDY_INSTANCES = "00201208"
N_SERIES_INSTANCES = "00201209"


class VerificationError(Exception):
    """The server answered, but not with the right thing."""


def first_value(item: dict, tag: str) -> Any:
    try:
        return item[tag]["Value"][0]
    except (KeyError, IndexError, TypeError):
        return None


def parse_json(body: bytes) -> Any:
    try:
        return loads(body)
    except ValueError as exc:
        raise VerificationError(f"body is not JSON ({exc})") from None


def check_status(status: int, allowed: Iterable[int] = (200,)) -> None:
    if status not in allowed:
        raise VerificationError(f"HTTP {status}")


# --- STOW-RS -----------------------------------------------------------------------------

def check_stow(status: int, body: bytes, sent: set[str]) -> None:
    """200, every sent SOP Instance UID referenced exactly once, nothing failed."""
    check_status(status)
    doc = parse_json(body)
    if not isinstance(doc, dict):
        raise VerificationError("STOW response is not a DICOM JSON object")
    failed = (doc.get(FAILED_SOP_SEQ) or {}).get("Value") or []
    if failed:
        raise VerificationError(f"{len(failed)} instance(s) in FailedSOPSequence")
    refs = (doc.get(REFERENCED_SOP_SEQ) or {}).get("Value") or []
    got = [first_value(r, REFERENCED_SOP_INSTANCE) for r in refs]
    if len(got) != len(set(got)) or set(got) != sent:
        raise VerificationError(f"ReferencedSOPSequence names {len(set(got))} of "
                                f"{len(sent)} sent instances")


# --- QIDO-RS -----------------------------------------------------------------------------

def qido_items(status: int, body: bytes) -> list[dict]:
    check_status(status, (200, 204))
    if status == 204 or not body.strip():
        return []
    doc = parse_json(body)
    if not isinstance(doc, list):
        raise VerificationError("QIDO response is not a JSON array")
    return doc


def check_uid_set(items: list[dict], tag: str, expected: set[str]) -> None:
    got = [first_value(i, tag) for i in items]
    if len(got) != len(set(got)):
        raise VerificationError("duplicate results")
    if set(got) != expected:
        missing, extra = len(expected - set(got)), len(set(got) - expected)
        raise VerificationError(f"{len(got)} results, expected {len(expected)} "
                                f"({missing} missing, {extra} unexpected)")


def check_page(items: list[dict], tag: str, expected: set[str], limit: int,
               offset: int) -> set[str]:
    """One page of a paged query: right size, all from the expected set, no duplicates."""
    got = [first_value(i, tag) for i in items]
    want = max(0, min(limit, len(expected) - offset))
    if len(got) != want:
        raise VerificationError(f"page has {len(got)} results, expected {want}")
    if len(set(got)) != len(got) or not set(got) <= expected:
        raise VerificationError("page holds duplicates or results that do not match")
    return set(got)


def check_counts(items: list[dict], key_tag: str, count_tag: str,
                 expected: dict[str, int]) -> int:
    """Where a server returns a NumberOf* attribute it must be exact; returns how many
    items carried it."""
    present = 0
    for item in items:
        n = first_value(item, count_tag)
        if n is None:
            continue
        present += 1
        key = first_value(item, key_tag)
        if int(n) != expected.get(key, -1):
            raise VerificationError(f"{count_tag} is {n}, expected {expected.get(key)}")
    return present


# --- WADO-RS -----------------------------------------------------------------------------

def sop_from_meta(head: bytes) -> str | None:
    """MediaStorageSOPInstanceUID (0002,0003) from the first bytes of a Part 10 file
    (the File Meta is always Explicit VR Little Endian)."""
    k = head.find(b"\x02\x00\x03\x00UI")
    if k < 0 or len(head) < k + 8:
        return None
    n = int.from_bytes(head[k + 6:k + 8], "little")
    if len(head) < k + 8 + n:
        return None
    return head[k + 8:k + 8 + n].rstrip(b"\x00 ").decode("ascii", "replace")


def instance_lookup(payload: dict[str, bytes]):
    """Identify a streamed part by its SOP Instance UID; compare it with what was sent."""
    def lookup(head: bytes):
        sop = sop_from_meta(head)
        data = payload.get(sop) if sop else None
        return None if data is None else (sop, data)
    return lookup


def check_instances(parts: list, expected_sops: set[str], by_sha: dict[str, str]) -> None:
    """Whole-study retrieve as stored: exactly the study's instances, byte for byte."""
    seen: list[str] = []
    for p in parts:
        if p.expected is not None:
            if not p.exact:
                raise VerificationError(f"instance {p.expected[-12:]} differs from what was "
                                        f"stored ({p.size} bytes)")
            sop = p.expected
        else:
            sop = by_sha.get(p.sha256)
            if sop is None:
                raise VerificationError(f"a part of {p.size} bytes is not any stored object "
                                        "byte for byte")
        seen.append(sop)
    if len(seen) != len(set(seen)) or set(seen) != expected_sops:
        raise VerificationError(f"{len(set(seen))} distinct instances, expected "
                                f"{len(expected_sops)}")


def check_metadata(items: Any, expected: dict[str, Any]) -> None:
    """Series metadata: one item per instance, right UIDs, rows/columns, PatientID and a
    Pixel Data reference (BulkDataURI or InlineBinary)."""
    if not isinstance(items, list):
        raise VerificationError("metadata is not a JSON array")
    got = [first_value(i, SOP_INSTANCE_UID) for i in items]
    if len(got) != len(set(got)) or set(got) != set(expected):
        raise VerificationError(f"{len(got)} metadata items, expected {len(expected)}")
    for item in items:
        inst = expected[first_value(item, SOP_INSTANCE_UID)]
        if (first_value(item, "00280010") != inst.rows
                or first_value(item, "00280011") != inst.columns
                or first_value(item, "00100020") != inst.patient_id
                or first_value(item, SERIES_UID) != inst.series):
            raise VerificationError("metadata attributes differ from the stored instance")
        pd = item.get("7FE00010") or {}
        if not (pd.get("BulkDataURI") or pd.get("InlineBinary")):
            raise VerificationError("metadata lacks a Pixel Data reference")


def check_frame(parts: list, pixel_sha256: str, nbytes: int) -> None:
    """One part holding exactly the stored frame (compared, or by its sha256)."""
    if len(parts) != 1:
        raise VerificationError(f"{len(parts)} parts for one frame")
    p = parts[0]
    ok = p.exact if p.expected is not None else p.sha256 == pixel_sha256
    if p.size != nbytes or not ok:
        raise VerificationError(f"frame bytes differ from the stored pixel data "
                                f"({p.size} bytes, expected {nbytes})")


def decode_marker(arr: np.ndarray) -> int | None:
    """The InstanceNumber coded by the marker squares of a rendered slice (any size, the
    aspect ratio kept), or None when the row is not there the right way up."""
    from .dataset import MARKER_BITS, MARKER_SIZE, MARKER_STEP, MARKER_X, MARKER_Y
    h, w = arr.shape
    sy, sx = h / 512.0, w / 512.0

    def level(y0: float, x0: float) -> float:
        m = MARKER_SIZE * 0.25
        ya, yb = int(round((y0 + m) * sy)), int(round((y0 + MARKER_SIZE - m) * sy))
        xa, xb = int(round((x0 + m) * sx)), int(round((x0 + MARKER_SIZE - m) * sx))
        return float(arr[ya:max(yb, ya + 1), xa:max(xb, xa + 1)].mean())

    levels = [level(MARKER_Y, MARKER_X + MARKER_STEP * k) for k in range(MARKER_BITS + 2)]
    lo, hi = levels[-1], levels[0]
    if hi - lo < 64:
        return None
    bits = [v > (lo + hi) / 2 for v in levels[1:-1]]
    return sum(1 << b for b, on in enumerate(bits) if on)


def check_image(body: bytes, expected_for: Callable[[int], np.ndarray],
                number: int | set[int], *, max_side: int | None = None,
                min_corr: float = 0.9) -> int:
    """A rendered JPEG/PNG: decodes; right size (or fits ``max_side`` keeping the aspect);
    shows slice ``number`` (or one of a set: a series thumbnail may pick any) the right
    way up, read from its marker squares; and looks like that slice's expected windowed
    image ``expected_for(n)`` (Pearson r >= ``min_corr``, loose on purpose: renderers may
    window differently, the marker is the identity check). Returns the slice shown."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with pacsd
        raise VerificationError("Pillow is needed to verify rendered images") from None
    try:
        img = Image.open(io.BytesIO(body))
        img.load()
    except Exception as exc:  # noqa: BLE001 - any decode failure is a wrong answer
        raise VerificationError(f"not a decodable image ({type(exc).__name__})") from None
    arr = np.asarray(img.convert("L"), dtype=np.float32)
    allowed = number if isinstance(number, set) else {number}
    h, w = expected_for(next(iter(allowed))).shape
    if max_side is None:
        if arr.shape != (h, w):
            raise VerificationError(f"image is {arr.shape[1]}x{arr.shape[0]}, expected {w}x{h}")
    elif max(arr.shape) > max_side or abs(arr.shape[0] / arr.shape[1] - h / w) > 0.05:
        raise VerificationError(f"thumbnail is {arr.shape[1]}x{arr.shape[0]}, not within "
                                f"{max_side} px with the aspect of {w}x{h}")
    shown = decode_marker(arr)
    if shown is None or shown not in allowed:
        raise VerificationError(f"image does not show the requested slice the right way up "
                                f"(marker reads {shown})")
    expected = expected_for(shown)
    ref = expected.astype(np.float32)
    if ref.shape != arr.shape:
        ref = np.asarray(Image.fromarray(expected).resize((arr.shape[1], arr.shape[0]),
                                                          Image.Resampling.BILINEAR),
                         dtype=np.float32)
    a, b = arr.ravel() - arr.mean(), ref.ravel() - ref.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    corr = float((a * b).sum() / denom) if denom else 0.0
    if corr < min_corr:
        raise VerificationError(f"image does not show the stored pixels (r={corr:.2f})")
    return shown
