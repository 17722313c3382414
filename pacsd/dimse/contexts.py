"""Presentation contexts pacsd accepts and proposes (docs/dimse-conformance.md §2, §3).

Accepted (SCP):

* Verification;
* every storage SOP class pynetdicom knows (``AllStoragePresentationContexts``) with every
  transfer syntax pacsd stores as received (R-A2, R-A5: compressed objects stay
  compressed, byte for byte). Both roles are accepted in SCP/SCU role selection, so a
  C-GET requestor can act as the Storage SCP on the same association;
* Patient Root and Study Root Query/Retrieve FIND, GET and MOVE.

Proposed (SCU, C-MOVE sub-operations): for each SOP class being moved, one context per
stored transfer syntax (so the destination can take the stored bytes unchanged) plus one
with Explicit and Implicit VR Little Endian as a fallback pacsd can transcode to
losslessly (``pacsd.dicom.transcode``).
"""
from __future__ import annotations

from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
                         ExplicitVRLittleEndian, ImplicitVRLittleEndian)
from pynetdicom import AllStoragePresentationContexts, build_context
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (PatientRootQueryRetrieveInformationModelFind,
                                  PatientRootQueryRetrieveInformationModelGet,
                                  PatientRootQueryRetrieveInformationModelMove,
                                  StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelGet,
                                  StudyRootQueryRetrieveInformationModelMove, Verification)

from ..model import InstanceRow


class AcceptorContext(PresentationContext):
    """A supported context that copies cheaply. pynetdicom deep-copies the server's
    whole list of supported contexts for every accepted association (~180 contexts,
    ~2,800 transfer syntax UIDs, each re-created and re-validated by pydicom: tens of ms
    per association, more on a busy machine, paid by every C-FIND and storescu run). UIDs
    are immutable, so a copy only needs its own list of them."""

    def __deepcopy__(self, memo: dict) -> "AcceptorContext":
        new = AcceptorContext.__new__(AcceptorContext)
        new.__dict__.update(self.__dict__)
        new._transfer_syntax = list(self._transfer_syntax)
        return new

    def reorder(self, ranked: list[str]) -> None:
        """Put this context's own (already validated) transfer syntaxes in ``ranked``'s
        order, without pynetdicom's setter re-validating every UID (a few ms for the
        ~120 contexts getscu proposes)."""
        own = {str(ts): ts for ts in self._transfer_syntax}
        self._transfer_syntax = [own[ts] for ts in ranked]


def _acceptor(cx: PresentationContext) -> AcceptorContext:
    cx.__class__ = AcceptorContext  # same attributes, cheap __deepcopy__
    return cx  # type: ignore[return-value]

#: Transfer syntaxes accepted for storage, stored as received (R-A2).
STORAGE_TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    "1.2.840.10008.1.2.4.50",   # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",   # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",   # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",   # JPEG Lossless, First-Order Prediction (Process 14 SV1)
    "1.2.840.10008.1.2.4.80",   # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",   # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",   # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91",   # JPEG 2000
    "1.2.840.10008.1.2.5",      # RLE Lossless
    "1.2.840.10008.1.2.4.201",  # High-Throughput JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.202",  # High-Throughput JPEG 2000 with RPCL Lossless Only
    "1.2.840.10008.1.2.4.203",  # High-Throughput JPEG 2000
)

#: Transfer syntaxes for Verification and query/retrieve identifiers.
COMMAND_TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)

#: Query/Retrieve information models: SOP Class UID -> (root, service).
QR_MODELS: dict[str, tuple[str, str]] = {
    PatientRootQueryRetrieveInformationModelFind: ("PATIENT", "FIND"),
    PatientRootQueryRetrieveInformationModelGet: ("PATIENT", "GET"),
    PatientRootQueryRetrieveInformationModelMove: ("PATIENT", "MOVE"),
    StudyRootQueryRetrieveInformationModelFind: ("STUDY", "FIND"),
    StudyRootQueryRetrieveInformationModelGet: ("STUDY", "GET"),
    StudyRootQueryRetrieveInformationModelMove: ("STUDY", "MOVE"),
}

#: Transfer syntaxes pacsd can transcode any stored object to (lossless, verified),
#: in order of preference, for peers that did not accept the stored one.
FALLBACK_TRANSFER_SYNTAXES: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

#: PS3.8: at most 128 presentation contexts in one A-ASSOCIATE-RQ.
MAX_PROPOSED = 128


def storage_sop_classes() -> list[str]:
    return [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]


def supported_contexts() -> list[PresentationContext]:
    """Every context the SCP accepts (see module docstring)."""
    out = [build_context(Verification, list(COMMAND_TRANSFER_SYNTAXES))]
    for uid in QR_MODELS:
        out.append(build_context(uid, list(COMMAND_TRANSFER_SYNTAXES)))
    for uid in storage_sop_classes():
        cx = build_context(uid, list(STORAGE_TRANSFER_SYNTAXES))
        # Role selection: accept a requestor that wants to be SCU (it sends us C-STOREs)
        # and one that wants to be SCP (C-GET: we send it C-STOREs on this association).
        cx.scu_role = True
        cx.scp_role = True
        out.append(cx)
    return [_acceptor(cx) for cx in out]


def move_contexts(rows: list[InstanceRow]) -> list[PresentationContext]:
    """Contexts to propose to a C-MOVE destination for ``rows`` (module docstring)."""
    stored: dict[str, list[str]] = {}
    for row in rows:
        syntaxes = stored.setdefault(row.sop_class_uid, [])
        if row.transfer_syntax_uid not in syntaxes:
            syntaxes.append(row.transfer_syntax_uid)
    out: list[PresentationContext] = []
    for sop_class, syntaxes in stored.items():
        wanted = [[ts] for ts in syntaxes]
        fallback = [ts for ts in FALLBACK_TRANSFER_SYNTAXES if ts not in syntaxes]
        if fallback:
            wanted.append(fallback)
        for ts_list in wanted:
            if len(out) >= MAX_PROPOSED:
                return out  # the instances left without a context fail (counted)
            out.append(build_context(sop_class, ts_list))
    return out or [build_context(Verification)]


def choose_transfer_syntax(stored: str, accepted: frozenset[str],
                           transcodable: tuple[str, ...]) -> str | None:
    """The transfer syntax to send an object stored in ``stored`` over contexts that
    accepted ``accepted``: as stored when possible, else a lossless transcode target,
    else None (the sub-operation fails)."""
    if stored in accepted:
        return stored
    for ts in FALLBACK_TRANSFER_SYNTAXES + tuple(transcodable):
        if ts in accepted and ts in transcodable:
            return ts
    return None
