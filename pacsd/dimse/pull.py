"""Pull from another PACS (R-A3, R-H2): C-FIND at STUDY level, then C-GET or C-MOVE of
each study (``pacsd import --from-peer``; ``import_cli.py`` queues one job per study).

* :meth:`Puller.find_studies` — Study Root C-FIND with the filters (StudyDate range,
  PatientID, StudyInstanceUID list, ModalitiesInStudy) asking for
  NumberOfStudyRelatedInstances and SOPClassesInStudy, so a study already complete
  locally is skipped and C-GET proposes the right storage contexts.
* :meth:`Puller.get_study` — C-GET on one association; the peer's C-STORE
  sub-operations arrive on it and go through pacsd's own C-STORE handler
  (``cstore.handle_store``: the data set bytes stored as received, through the one
  ingest path). Storage contexts: for each SOP class of the study (a common set when the
  peer did not say) one context per transfer syntax in :data:`PULL_TRANSFER_SYNTAXES`, so
  the peer can send every object as it stores it (R-A5), with SCP role selection.
* :meth:`Puller.move_study` — C-MOVE to this archive's own AE title: the peer sends to
  the DIMSE listener of the running ``pacsd serve`` (the peer must know that AE).

Each returns the final sub-operation counts; :class:`PullError` carries a PHI-free
reason and whether retrying can help.
"""
from __future__ import annotations

from types import SimpleNamespace

import logging
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import build_context, build_role, evt
from pynetdicom.sop_class import (StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelGet,
                                  StudyRootQueryRetrieveInformationModelMove)

from ..config import Settings
from .context import ScpContext
from .contexts import COMMAND_TRANSFER_SYNTAXES, MAX_PROPOSED
from .cstore import handle_store
from .net import PacsdAE, Policy
from .server import configure_pynetdicom

log = logging.getLogger(__name__)

#: One C-GET storage context per syntax: uncompressed first, then the lossless and
#: lossy compressed forms an old PACS may hold (stored as received either way).
PULL_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.91",
)
#: SOP classes proposed for C-GET when the peer does not list SOPClassesInStudy.
COMMON_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2",      # CT
    "1.2.840.10008.5.1.4.1.1.4",      # MR
    "1.2.840.10008.5.1.4.1.1.1",      # CR
    "1.2.840.10008.5.1.4.1.1.1.1",    # DX (presentation)
    "1.2.840.10008.5.1.4.1.1.6.1",    # US
    "1.2.840.10008.5.1.4.1.1.7",      # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.128",    # PET
    "1.2.840.10008.5.1.4.1.1.20",     # NM
    "1.2.840.10008.5.1.4.1.1.12.1",   # XA
    "1.2.840.10008.5.1.4.1.1.1.2",    # MG (presentation)
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection
)


class PullError(Exception):
    def __init__(self, reason: str, *, retry: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


@dataclass(frozen=True)
class RemoteStudy:
    study_uid: str
    instances: int | None
    sop_classes: tuple[str, ...]
    study_date: str = ""


@dataclass(frozen=True)
class SubOperations:
    completed: int
    failed: int
    warning: int
    status: int


class Puller:
    def __init__(self, settings: Settings, peer_aet: str, host: str, port: int,
                 ctx: ScpContext | None = None) -> None:
        self.settings = settings
        self.peer_aet = peer_aet
        self.host = host
        self.port = port
        self.ctx = ctx

    def _ae(self) -> PacsdAE:
        configure_pynetdicom()
        d = self.settings.dimse
        ae = PacsdAE(ae_title=self.settings.server.ae_title)
        ae.policy = Policy([], d.max_pdu, d.network_timeout_s)
        ae.maximum_pdu_size = d.max_pdu
        ae.acse_timeout = d.acse_timeout_s
        ae.dimse_timeout = d.dimse_timeout_s
        ae.network_timeout = d.network_timeout_s
        ae.connection_timeout = d.acse_timeout_s
        return ae

    def _associate(self, ae: PacsdAE, contexts, **kw):
        assoc = ae.associate(self.host, self.port, contexts=contexts,
                             ae_title=self.peer_aet, max_pdu=self.settings.dimse.max_pdu,
                             **kw)
        if not assoc.is_established:
            if assoc.is_rejected:
                raise PullError("the peer rejected the association", retry=False)
            raise PullError("cannot associate with the peer (down or unreachable)")
        return assoc

    # --- C-FIND ---------------------------------------------------------------------------
    def find_studies(self, *, study_date: str = "", patient_id: str = "",
                     study_uids: list[str] | None = None, modality: str = ""
                     ) -> list[RemoteStudy]:
        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = "\\".join(study_uids or [])
        ident.StudyDate = study_date
        ident.PatientID = patient_id
        ident.ModalitiesInStudy = modality
        ident.NumberOfStudyRelatedInstances = ""
        ident.SOPClassesInStudy = ""
        ae = self._ae()
        contexts = [build_context(StudyRootQueryRetrieveInformationModelFind,
                                  list(COMMAND_TRANSFER_SYNTAXES))]
        assoc = self._associate(ae, contexts)
        out: dict[str, RemoteStudy] = {}
        try:
            for status, found in assoc.send_c_find(
                    ident, StudyRootQueryRetrieveInformationModelFind):
                code = getattr(status, "Status", None)
                if code is None:
                    raise PullError("C-FIND: no response from the peer")
                if code in (0xFF00, 0xFF01) and found is not None:
                    uid = str(found.get("StudyInstanceUID", "") or "").strip()
                    if not uid:
                        continue
                    n = found.get("NumberOfStudyRelatedInstances", None)
                    classes = found.get("SOPClassesInStudy", None) or []
                    if isinstance(classes, str):
                        classes = [classes]
                    out[uid] = RemoteStudy(
                        uid, int(n) if n not in (None, "") else None,
                        tuple(str(c) for c in classes if str(c).strip()),
                        str(found.get("StudyDate", "") or ""))
                elif code != 0x0000:
                    raise PullError(f"C-FIND failed with status 0x{code:04X}",
                                    retry=(code & 0xFF00) == 0xA700)
        finally:
            if assoc.is_established:
                assoc.release()
        return list(out.values())

    def find_instances(self, study_uid: str) -> dict[str, str]:
        """The SOP Instance UIDs the peer holds for one study (reconciliation, R-A10):
        SERIES level, then IMAGE level per series (hierarchical Study Root, so a strict
        PACS answers too), on one association. Returns SOP Instance UID -> Series UID."""
        ae = self._ae()
        contexts = [build_context(StudyRootQueryRetrieveInformationModelFind,
                                  list(COMMAND_TRANSFER_SYNTAXES))]
        assoc = self._associate(ae, contexts)
        out: dict[str, str] = {}
        try:
            ident = Dataset()
            ident.QueryRetrieveLevel = "SERIES"
            ident.StudyInstanceUID = study_uid
            ident.SeriesInstanceUID = ""
            series = [str(ds.get("SeriesInstanceUID", "") or "").strip()
                      for ds in self._matches(assoc, ident)]
            for uid in dict.fromkeys(s for s in series if s):
                ident = Dataset()
                ident.QueryRetrieveLevel = "IMAGE"
                ident.StudyInstanceUID = study_uid
                ident.SeriesInstanceUID = uid
                ident.SOPInstanceUID = ""
                for ds in self._matches(assoc, ident):
                    sop = str(ds.get("SOPInstanceUID", "") or "").strip()
                    if sop:
                        out[sop] = uid
        finally:
            if assoc.is_established:
                assoc.release()
        return out

    def _matches(self, assoc, ident: Dataset) -> list[Dataset]:
        found_all = []
        for status, found in assoc.send_c_find(ident, StudyRootQueryRetrieveInformationModelFind):
            code = getattr(status, "Status", None)
            if code is None:
                raise PullError("C-FIND: no response from the peer")
            if code in (0xFF00, 0xFF01):
                if found is not None:
                    found_all.append(found)
            elif code != 0x0000:
                raise PullError(f"C-FIND failed with status 0x{code:04X}",
                                retry=(code & 0xFF00) == 0xA700)
        return found_all

    # --- C-GET ----------------------------------------------------------------------------
    def get_study(self, study: RemoteStudy, sops: dict[str, str] | None = None
                  ) -> SubOperations:
        """``sops`` (SOP Instance UID -> Series UID): only these, at IMAGE level."""
        if self.ctx is None:
            raise PullError("C-GET needs the ingest context", retry=False)
        classes = list(study.sop_classes or COMMON_SOP_CLASSES)
        per_class = max(1, (MAX_PROPOSED - 1) // max(1, len(classes)))
        syntaxes = PULL_TRANSFER_SYNTAXES[:per_class]
        contexts = [build_context(StudyRootQueryRetrieveInformationModelGet,
                                  list(COMMAND_TRANSFER_SYNTAXES))]
        for uid in classes:
            for ts in syntaxes:
                if len(contexts) < MAX_PROPOSED:
                    contexts.append(build_context(uid, [ts]))
        roles = [build_role(uid, scp_role=True) for uid in classes]
        ae = self._ae()
        handlers = [(evt.EVT_C_STORE, handle_store, [self.ctx])]
        assoc = self._associate(ae, contexts, ext_neg=roles, evt_handlers=handlers)
        try:
            return _final(assoc.send_c_get(_retrieve_identifier(study, sops),
                                           StudyRootQueryRetrieveInformationModelGet),
                          "C-GET")
        finally:
            if assoc.is_established:
                assoc.release()
            if self.ctx.access is not None:  # the archive audit of what arrived (R-E3)
                self.ctx.access.closed(SimpleNamespace(assoc=assoc),
                                       self.ctx.ingest.archive.store)

    # --- C-MOVE ---------------------------------------------------------------------------
    def move_study(self, study: RemoteStudy, sops: dict[str, str] | None = None
                   ) -> SubOperations:
        ae = self._ae()
        contexts = [build_context(StudyRootQueryRetrieveInformationModelMove,
                                  list(COMMAND_TRANSFER_SYNTAXES))]
        assoc = self._associate(ae, contexts)
        try:
            return _final(assoc.send_c_move(_retrieve_identifier(study, sops),
                                            self.settings.server.ae_title,
                                            StudyRootQueryRetrieveInformationModelMove),
                          "C-MOVE")
        finally:
            if assoc.is_established:
                assoc.release()


def _retrieve_identifier(study: RemoteStudy, sops: dict[str, str] | None = None
                         ) -> Dataset:
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = study.study_uid
    if sops:  # some instances only (reconcile, R-A10): IMAGE level, one series
        series = set(sops.values())
        if len(series) != 1:
            raise PullError("an IMAGE-level retrieve names one series", retry=False)
        ident.QueryRetrieveLevel = "IMAGE"
        ident.SeriesInstanceUID = series.pop()
        ident.SOPInstanceUID = list(sops)
    return ident


def _final(responses, what: str) -> SubOperations:
    last = None
    for status, _ in responses:
        code = getattr(status, "Status", None)
        if code is None:
            raise PullError(f"{what}: no response from the peer (association lost)")
        last = status
    if last is None:
        raise PullError(f"{what}: no response from the peer")
    code = int(last.Status)
    ops = SubOperations(int(last.get("NumberOfCompletedSuboperations", 0) or 0),
                        int(last.get("NumberOfFailedSuboperations", 0) or 0),
                        int(last.get("NumberOfWarningSuboperations", 0) or 0), code)
    if code in (0x0000, 0xB000):
        return ops  # 0xB000: some sub-operations failed; the caller looks at the counts
    if code == 0xA801:
        raise PullError(f"{what}: the peer does not know this archive's AE title as a "
                        "move destination (0xA801)", retry=False)
    raise PullError(f"{what} failed with status 0x{code:04X}")
