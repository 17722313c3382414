"""Reports that arrive as DICOM Structured Reports (R-C2): Basic Text, Enhanced and
Comprehensive SR (and Comprehensive 3D) stored by STOW-RS or C-STORE like any object.

``text_of`` turns the content tree into plain text for the patient's phone page and
the keyword explanations: one line per item, ``Heading: value`` for TEXT, CODE, NUM,
DATE, TIME, PNAME items, nested containers as headings. ``status_of`` reads the report
state: CompletionFlag ``COMPLETE`` and VerificationFlag ``VERIFIED`` make a final report,
anything else a preliminary one.
"""
from __future__ import annotations

from pydicom.dataset import Dataset

SR_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
}
MAX_TEXT = 64 * 1024


def _meaning(item: Dataset) -> str:
    seq = item.get("ConceptNameCodeSequence") or []
    return str(seq[0].get("CodeMeaning", "")) if seq else ""


def _value(item: Dataset) -> str:
    vt = str(item.get("ValueType", ""))
    if vt == "TEXT":
        return str(item.get("TextValue", ""))
    if vt == "CODE":
        seq = item.get("ConceptCodeSequence") or []
        return str(seq[0].get("CodeMeaning", "")) if seq else ""
    if vt == "NUM":
        mv = item.get("MeasuredValueSequence") or []
        if not mv:
            return ""
        units = mv[0].get("MeasurementUnitsCodeSequence") or []
        unit = str(units[0].get("CodeValue", "")) if units else ""
        return f"{mv[0].get('NumericValue', '')} {unit}".strip()
    if vt in ("DATE", "TIME", "DATETIME", "PNAME", "UIDREF"):
        kw = {"DATE": "Date", "TIME": "Time", "DATETIME": "DateTime",
              "PNAME": "PersonName", "UIDREF": "UID"}[vt]
        return str(item.get(kw, ""))
    return ""


def _walk(items, depth: int, out: list[str]) -> None:
    for item in items or []:
        vt = str(item.get("ValueType", ""))
        name = _meaning(item)
        if vt == "CONTAINER":
            if name and depth > 0:
                out.append(name)
            _walk(item.get("ContentSequence"), depth + 1, out)
            continue
        value = _value(item).strip()
        if value:
            out.append(f"{name}: {value}" if name else value)
        _walk(item.get("ContentSequence"), depth + 1, out)


def text_of(ds: Dataset) -> str:
    """The report's text (title first), at most ``MAX_TEXT`` characters."""
    out: list[str] = []
    title = _meaning(ds)
    if title:
        out.append(title)
    _walk(ds.get("ContentSequence"), 1, out)
    return "\n".join(out)[:MAX_TEXT]


def status_of(ds: Dataset) -> str:
    complete = str(ds.get("CompletionFlag", "")).upper() == "COMPLETE"
    verified = str(ds.get("VerificationFlag", "")).upper() == "VERIFIED"
    return "final" if complete and verified else "preliminary"
