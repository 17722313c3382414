"""L0: the one exception hierarchy of pacsd.

Every error that crosses a layer is a :class:`PacsdError`. It carries the HTTP status the
DICOMweb/JSON adapter answers with, the DIMSE status the DIMSE adapter answers with, and
the DICOMweb FailureReason (0008,1197) used in STOW-RS FailedSOPSequence items
(reliability-matrix §6.1 / §6.2). Adapters map it in exactly one place each
(``web/middleware.py``, ``dimse/status.py``); third-party exceptions are wrapped at the
boundary that sees them. Messages must never contain patient data (SEC-23): say which
attribute is wrong, never its value.
"""
from __future__ import annotations


class PacsdError(Exception):
    """Base class. ``reason`` is a short, PHI-free English sentence for the client."""

    http_status: int = 500
    dimse_status: int = 0x0110  # Processing failure
    failure_reason: int = 0x0110  # (0008,1197) for STOW-RS
    headers: dict[str, str] | None = None

    def __init__(self, reason: str = "", *, failure_reason: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(reason or self.__class__.__doc__ or self.__class__.__name__)
        self.reason = reason or (self.__class__.__doc__ or "").strip().splitlines()[0]
        if failure_reason is not None:
            self.failure_reason = failure_reason
        if headers is not None:
            self.headers = headers


# --- request-level errors (the whole HTTP request is refused) -----------------------------

class BadRequest(PacsdError):
    """The request is malformed."""
    http_status = 400
    dimse_status = 0xC000
    failure_reason = 0xC000


class Unauthorized(PacsdError):
    """Authentication is required."""
    http_status = 401
    dimse_status = 0x0124
    failure_reason = 0x0124


class Forbidden(PacsdError):
    """Not authorised."""
    http_status = 403
    dimse_status = 0x0124
    failure_reason = 0x0124


class NotFound(PacsdError):
    """No such resource."""
    http_status = 404
    dimse_status = 0xC000  # C-GET/C-MOVE: identifier matched nothing retrievable


class MethodNotAllowed(PacsdError):
    """Method not allowed on this resource."""
    http_status = 405


class NotAcceptable(PacsdError):
    """The server cannot produce any of the representations the client accepts."""
    http_status = 406


class TooManyRequests(PacsdError):
    """Too many failed attempts from this address; try again later (SEC-8)."""
    http_status = 429
    dimse_status = 0xA700
    failure_reason = 0xA700

    def __init__(self, reason: str = "", *, retry_after: int = 60, **kw) -> None:
        super().__init__(reason, headers={"Retry-After": str(max(1, retry_after))}, **kw)


class Conflict(PacsdError):
    """The request conflicts with the archive's state."""
    http_status = 409
    failure_reason = 0xC000


class PayloadTooLarge(PacsdError):
    """The body, a part or an instance exceeds a configured limit."""
    http_status = 413
    dimse_status = 0xA700
    failure_reason = 0xA700


class UnsupportedMediaType(PacsdError):
    """Unsupported Content-Type, part type or Content-Encoding."""
    http_status = 415
    failure_reason = 0xC000


class Unprocessable(PacsdError):
    """The object exists but this representation cannot be produced from it (e.g. render)."""
    http_status = 422
    dimse_status = 0xC000


class OutOfResources(PacsdError):
    """Storage or index temporarily unavailable; nothing was acknowledged (FT-3, FT-10)."""
    http_status = 503
    dimse_status = 0xA700
    failure_reason = 0xA700

    def __init__(self, reason: str = "", *, retry_after: int = 30, **kw) -> None:
        headers = {"Retry-After": str(retry_after)}
        super().__init__(reason, headers=headers, **kw)


class DataUnavailable(PacsdError):
    """Every copy of a stored object failed its integrity check; nothing is served (FT-8)."""
    http_status = 503
    dimse_status = 0xA702
    failure_reason = 0x0110


# --- per-instance errors (one STOW part / one C-STORE is refused) --------------------------

class InstanceError(PacsdError):
    """An instance was refused; the rest of a STOW-RS request goes on."""
    http_status = 409
    #: Set by the ingest path once the header was parsed, so adapters can name the
    #: refused instance (STOW FailedSOPSequence, C-STORE response).
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None


class InvalidDicom(InstanceError):
    """The data is not a parsable DICOM Part 10 object (BI-1, BI-2, BI-7 .. BI-10)."""
    dimse_status = 0xC000
    failure_reason = 0xC000


class MissingAttribute(InstanceError):
    """A required attribute is missing or empty (BI-3, BI-4)."""
    dimse_status = 0xA900
    failure_reason = 0xA900


class InvalidUID(InstanceError):
    """A UID is not a valid DICOM UID (BI-6)."""
    dimse_status = 0x0117
    failure_reason = 0xA900


class StudyMismatch(InstanceError):
    """The instance does not belong to the study named in the request URL (BI-5)."""
    dimse_status = 0xA900
    failure_reason = 0xC409  # dcm4chee's code; documented in docs/conformance.md


class DuplicateInstance(InstanceError):
    """Same SOP Instance UID already stored with different content (BI-26)."""
    dimse_status = 0x0111
    failure_reason = 0x0111


class HierarchyConflict(InstanceError):
    """The SOP Instance UID (or series) already belongs to another series/study (BI-27)."""
    dimse_status = 0xA900
    failure_reason = 0xC410


class WriteDenied(InstanceError):
    """The study is outside the caller's data scope (R-A12, SEC-1): its institution is not
    one of the caller's, or it carries a sensitivity label the caller is not cleared for.
    Same answer for an existing study and a new one, so a refusal never tells whether the
    study exists. 0x0124 Refused: Not authorized (PS3.7 C.5.1; STOW-RS FailureReason)."""
    dimse_status = 0x0124
    failure_reason = 0x0124
    #: The refused instance's study, for the adapter's audit event (never in the answer).
    study_instance_uid: str | None = None


class SOPClassNotSupported(InstanceError):
    """The SOP Class is not supported for storage."""
    dimse_status = 0x0122
    failure_reason = 0x0122


class InstanceTooLarge(InstanceError):
    """The instance exceeds the configured maximum size (R-reliability §3.5)."""
    http_status = 413
    dimse_status = 0xA700
    failure_reason = 0xA700
