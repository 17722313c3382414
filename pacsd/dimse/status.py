"""The one place where errors become DIMSE statuses (reliability-matrix §6.2).

Every :class:`pacsd.errors.PacsdError` carries its ``dimse_status``; this module only
narrows it to what the DIMSE service at hand may answer (PS3.4 Annex B/C, PS3.7 C) and
builds the response dataset: ``Status`` plus an ``Error Comment`` (0000,0902) holding the
error's PHI-free ``reason`` (SEC-23), so a modality's log says *why* without pacsd ever
echoing a value. Anything that is not a PacsdError is a processing failure and is logged
by type only: exception texts of third-party libraries may quote data values.
"""
from __future__ import annotations

import logging
import traceback

from pydicom.dataset import Dataset

from .. import errors

log = logging.getLogger(__name__)

STORE = "C-STORE"
FIND = "C-FIND"
GET = "C-GET"
MOVE = "C-MOVE"

SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
PROCESSING_FAILURE = 0x0110
UNABLE_TO_PROCESS = 0xC000
IDENTIFIER_MISMATCH = 0xA900
MOVE_DESTINATION_UNKNOWN = 0xA801
OUT_OF_RESOURCES_MATCHES = 0xA701
OUT_OF_RESOURCES_SUBOPS = 0xA702

#: General statuses (PS3.7 C.5) any of the services may answer.
_GENERAL = {0x0122, 0x0124, 0x0210, 0x0211, 0x0212}


class DatasetMismatch(errors.InstanceError):
    """The data set's SOP Class or Instance UID differs from the C-STORE command (BI-35)."""
    dimse_status = 0xA900
    failure_reason = 0xA900


class IdentifierMismatch(errors.PacsdError):
    """The identifier does not match the information model (level or unique key)."""
    http_status = 400
    dimse_status = 0xA900
    failure_reason = 0xA900


def status_for(exc: BaseException, service: str) -> int:
    """The DIMSE status ``service`` answers for ``exc``."""
    if not isinstance(exc, errors.PacsdError):
        return PROCESSING_FAILURE if service == STORE else UNABLE_TO_PROCESS
    code = exc.dimse_status
    if service == STORE or code in _GENERAL:
        return code
    if service == FIND:
        # C-FIND knows A700, A900 and Cxxx only (PS3.4 C.4.1.1.4).
        if 0xA700 <= code <= 0xA7FF:
            return 0xA700
        if code == 0xA900 or 0xC000 <= code <= 0xCFFF:
            return code
        return UNABLE_TO_PROCESS
    # C-GET / C-MOVE (PS3.4 C.4.2.1.5 / C.4.3.1.4): out of resources while matching is
    # A701, while sending A702 (DataUnavailable already says A702).
    if code == 0xA700:
        return OUT_OF_RESOURCES_MATCHES
    if code in (0xA701, 0xA702, 0xA801, 0xA900) or 0xC000 <= code <= 0xCFFF:
        return code
    return UNABLE_TO_PROCESS


def reason_of(exc: BaseException) -> str:
    """A PHI-free one-line reason (PacsdError reasons are PHI-free by contract)."""
    if isinstance(exc, errors.PacsdError):
        return exc.reason
    return "processing failure"


def failure(exc: BaseException, service: str) -> Dataset:
    """Status dataset for a failed request: Status + Error Comment (LO, 64 chars)."""
    ds = Dataset()
    ds.Status = status_for(exc, service)
    comment = reason_of(exc).encode("ascii", "replace").decode()[:64]
    if comment:
        ds.ErrorComment = comment
    log_failure(exc, service, ds.Status)
    return ds


def log_failure(exc: BaseException, service: str, status: int) -> None:
    """One log line per failure; never a data value (SEC-23)."""
    if isinstance(exc, errors.PacsdError):
        level = logging.WARNING if status in (0xA700, 0xA701, 0xA702) else logging.INFO
        log.log(level, "%s refused with 0x%04X: %s", service, status, exc.reason)
    else:
        log.error("%s failed with 0x%04X: unexpected %s", service, status,
                  type(exc).__name__)
        # Frames only, not the message: third-party messages may quote values.
        log.debug("where the %s failure happened:\n%s", service,
                  "".join(traceback.format_tb(exc.__traceback__)))
