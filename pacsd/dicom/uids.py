"""DICOM UID syntax check shared by every layer (BI-6, BI-32).

A UID is used as a URL path segment (``/studies/{uid}``) and as an index key, never as a
storage key (blobs are content addressed), but it is still validated strictly on the
way in: PS3.5 §9.1 allows only digits and dots, no leading zero in a multi-digit
component, at most 64 characters. That rules out ``../``, ``/``, ``\\``, NUL, ``%2e``,
letters and whitespace by construction (BI-6).
"""
from __future__ import annotations

import re

#: PS3.5 §9.1: components are "0" or a digit string not starting with "0".
UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
#: PS3.5 §9.1: a UID shall not exceed 64 characters.
UID_MAX_LENGTH = 64


def is_valid_uid(value: object) -> bool:
    """Return True when ``value`` is a str that is a syntactically valid DICOM UID.

    ``fullmatch`` (not ``$``) so a trailing newline is rejected too.
    """
    return (
        isinstance(value, str)
        and 0 < len(value) <= UID_MAX_LENGTH
        and UID_PATTERN.fullmatch(value) is not None
    )
