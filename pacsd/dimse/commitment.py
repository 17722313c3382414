"""Storage Commitment Push Model SCP (PS3.4 Annex J): N-ACTION / N-EVENT-REPORT.

A modality asks pacsd (N-ACTION, Action Type 1, Transaction UID + Referenced SOP
Sequence) to take responsibility for instances it sent. pacsd answers the N-ACTION at
once (0x0000; 0x0123 for another action type, 0x0115/0x0114 for a missing or bad
Transaction UID or list), then checks each referenced instance: it is committed only when
the index holds it with the same SOP Class **and** its object is present in the store —
pacsd indexes an instance only after its bytes are durable on every copy, so this confirms
only durable instances. The result goes back in an N-EVENT-REPORT (Event Type 1: all
committed; 2: some failed, FailedSOPSequence with reason 0x0112 no such object instance
or 0x0119 class / instance conflict):

* when ``[dimse] peers`` knows the calling AE: on a new association to it, proposing the
  Storage Commitment context with the SCP role (J.3.3) — deterministic, whatever the
  modality does with its own association;
* otherwise on the same association, if the modality keeps it open (pynetdicom's
  acceptor reactor is paused while pacsd sends, so the N-EVENT-REPORT-RSP is not taken
  by it); a modality that released it at once cannot be reached (logged, no PHI).
"""
from __future__ import annotations

import logging
import threading

from pydicom.dataset import Dataset
from pynetdicom import build_context, build_role, evt
from pynetdicom.dimse_messages import N_ACTION_RSP
from pynetdicom.sop_class import StorageCommitmentPushModel

from .. import errors
from .context import ScpContext
from .contexts import COMMAND_TRANSFER_SYNTAXES

log = logging.getLogger(__name__)

WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
#: Seconds the report thread waits for the N-ACTION response to go out first.
PAUSE_WAIT_S = 10.0


def commitment_context():
    return build_context(StorageCommitmentPushModel, list(COMMAND_TRANSFER_SYNTAXES))


def handle_action(event, ctx: ScpContext) -> tuple[int, Dataset | None]:
    """pynetdicom EVT_N_ACTION handler."""
    if int(event.action_type or 0) != 1:
        return 0x0123, None  # no such action
    try:
        info = event.action_information
        transaction = str(info.get("TransactionUID", "") or "").strip()
        refs = [(str(i.get("ReferencedSOPClassUID", "") or "").strip(),
                 str(i.get("ReferencedSOPInstanceUID", "") or "").strip())
                for i in info.get("ReferencedSOPSequence", None) or []]
    except Exception:  # noqa: BLE001 - an undecodable request
        return 0x0115, None
    if not transaction:
        return 0x0114, None  # no such argument
    if not refs or any(not c or not i for c, i in refs):
        return 0x0115, None  # invalid argument value
    assoc = event.assoc
    calling = (assoc.requestor.ae_title or "").strip()
    try:
        # Committing is part of storing: the peer needs ``write``; what it may have
        # committed is looked up within its data scope (R-A12).
        actor = ctx.access.authorize(event, "write", "N-ACTION")
    except errors.Forbidden:
        return 0x0124, None  # refused: not authorised
    ok, failed = check(ctx, refs, actor)
    ds = report_dataset(transaction, ok, failed)
    log.info("storage commitment: %d committed, %d failed", len(ok), len(failed))
    same = calling not in ctx.peers
    responded = threading.Event()
    if same:
        # Pause the reactor: it must not read the N-EVENT-REPORT-RSP meant for the report
        # thread; it stops at its checkpoint once this request is served. The report
        # waits until the N-ACTION-RSP is on the wire (PS3.4 J.3.3: response first).
        assoc._reactor_checkpoint.clear()

        def on_sent(ev) -> None:
            if isinstance(ev.message, N_ACTION_RSP):
                responded.set()
        assoc.bind(evt.EVT_DIMSE_SENT, on_sent)
    threading.Thread(target=_report, args=(assoc, ctx, calling, ds, 2 if failed else 1,
                                           same, responded),
                     name="pacsd-commitment", daemon=True).start()
    return 0x0000, None


def check(ctx: ScpContext, refs: list[tuple[str, str]], actor
          ) -> tuple[list[tuple[str, str]], list[tuple[str, str, int]]]:
    """(committed, failed with reason) for the referenced instances."""
    ok, failed = [], []
    for sop_class, sop_uid in refs:
        reason = _durable(ctx, sop_class, sop_uid, actor)
        if reason is None:
            ok.append((sop_class, sop_uid))
        else:
            failed.append((sop_class, sop_uid, reason))
    return ok, failed


def _durable(ctx: ScpContext, sop_class: str, sop_uid: str, actor) -> int | None:
    try:
        result = ctx.bridge.call(ctx.query.search(
            "instance", [("SOPInstanceUID", sop_uid), ("limit", "1")], base_url="",
            actor=actor))
    except errors.PacsdError:
        return NO_SUCH_OBJECT_INSTANCE
    if not result.items:
        return NO_SUCH_OBJECT_INSTANCE
    item = result.items[0]

    def first(tag: str) -> str:
        value = (item.get(tag) or {}).get("Value") or [""]
        return str(value[0])

    if first("00080016") != sop_class:
        return CLASS_INSTANCE_CONFLICT
    try:
        row = ctx.bridge.call(ctx.retrieve.instance(first("0020000D"), first("0020000E"),
                                                    sop_uid, actor=actor))
    except errors.PacsdError:
        return NO_SUCH_OBJECT_INSTANCE
    store = ctx.retrieve.archive.store
    return None if store.exists(row.sha256) else NO_SUCH_OBJECT_INSTANCE


def report_dataset(transaction: str, ok, failed) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction
    if ok:
        ds.ReferencedSOPSequence = [_item(c, i) for c, i in ok]
    if failed:
        items = []
        for c, i, reason in failed:
            item = _item(c, i)
            item.FailureReason = reason
            items.append(item)
        ds.FailedSOPSequence = items
    return ds


def _item(sop_class: str, sop_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_uid
    return item


def _report(assoc, ctx: ScpContext, calling: str, ds: Dataset, event_type: int,
            same: bool, responded: threading.Event) -> None:
    sent = False
    if not same:  # a known peer: a new association, as PS3.4 J.3.3 describes
        try:
            sent = _send_new_association(ctx, calling, ds, event_type)
        except Exception:  # noqa: BLE001
            log.warning("storage commitment: report on a new association failed")
        if not sent:
            log.warning("storage commitment: report NOT delivered to the calling AE")
        return
    try:
        if responded.wait(PAUSE_WAIT_S) and assoc.is_established and \
                not assoc.acse.is_release_requested():
            sent = _send(assoc, ds, event_type)
    except Exception:  # noqa: BLE001 - fall back to a new association
        log.warning("storage commitment: report on the same association failed")
    finally:
        assoc._reactor_checkpoint.set()
    if not sent:
        try:
            sent = _send_new_association(ctx, calling, ds, event_type)
        except Exception:  # noqa: BLE001
            log.warning("storage commitment: report on a new association failed")
    if not sent:
        log.warning("storage commitment: report NOT delivered (the association was "
                    "closed and the calling AE is not in [dimse] peers)")


def _send(assoc, ds: Dataset, event_type: int) -> bool:
    status, _ = assoc.send_n_event_report(ds, event_type, StorageCommitmentPushModel,
                                          WELL_KNOWN_INSTANCE)
    log.debug("storage commitment: N-EVENT-REPORT status %r", getattr(status, "Status", None))
    return getattr(status, "Status", None) == 0x0000


def _send_new_association(ctx: ScpContext, calling: str, ds: Dataset,
                          event_type: int) -> bool:
    address = ctx.peers.get(calling)
    if address is None:
        return False
    from .net import PacsdAE, Policy
    d = ctx.settings.dimse
    ae = PacsdAE(ae_title=ctx.ae_title)
    ae.policy = Policy([], d.max_pdu, d.network_timeout_s)
    ae.acse_timeout = ae.connection_timeout = d.acse_timeout_s
    ae.dimse_timeout = d.dimse_timeout_s
    ae.network_timeout = d.network_timeout_s
    cx = commitment_context()
    cx.scu_role, cx.scp_role = False, True
    assoc = ae.associate(address[0], address[1], contexts=[cx], ae_title=calling,
                         ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)])
    if not assoc.is_established:
        return False
    try:
        return _send(assoc, ds, event_type)
    finally:
        assoc.release()
