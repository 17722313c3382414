"""HTTP Accept / Content-Type parsing for DICOMweb content negotiation (PS3.18 §8.7).

Pure functions; the WADO handlers decide which representation they can produce from the
parsed ranges and answer 406 when none fits (R-A1, BI-31).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import errors

MAX_ACCEPT_LEN = 4096
MAX_RANGES = 32


@dataclass(frozen=True)
class MediaRange:
    type: str  # "multipart/related", "application/dicom", "*/*" ...
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def inner(self) -> str:
        """For multipart/related, the ``type`` parameter (the part media type)."""
        return self.params.get("type", "").lower()

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")


def _split(value: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes."""
    out, cur, quoted = [], [], False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def parse_media_type(value: str) -> MediaRange:
    pieces = _split(value, ";")
    mtype = pieces[0].strip().lower()
    if mtype.count("/") != 1:
        raise errors.BadRequest("malformed media type")
    params: dict[str, str] = {}
    q = 1.0
    for p in pieces[1:]:
        if not p.strip():
            continue
        name, eq, val = p.partition("=")
        if not eq:
            raise errors.BadRequest("malformed media type parameter")
        name = name.strip().lower()
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1]
        if name == "q":
            try:
                q = float(val)
            except ValueError:
                raise errors.BadRequest("malformed q value in Accept") from None
            if not 0 <= q <= 1:
                raise errors.BadRequest("q value out of range in Accept")
        else:
            params[name] = val
    return MediaRange(mtype, params, q)


def parse_accept(header: str | None) -> list[MediaRange]:
    """Media ranges, best first; an absent header means ``*/*``."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    if len(header) > MAX_ACCEPT_LEN:
        raise errors.BadRequest("Accept header too long")
    items = [s for s in _split(header, ",") if s.strip()]
    if len(items) > MAX_RANGES:
        raise errors.BadRequest("too many media ranges in Accept")
    ranges = [parse_media_type(s) for s in items]
    ranges = [r for r in ranges if r.q > 0]
    return sorted(ranges, key=lambda r: -r.q)  # sorted() is stable: header order breaks ties


def matches(rng: MediaRange, mtype: str) -> bool:
    if rng.type == "*/*":
        return True
    major, _, minor = rng.type.partition("/")
    return rng.type == mtype or (minor == "*" and mtype.startswith(major + "/"))
