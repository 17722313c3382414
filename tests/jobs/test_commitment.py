"""Storage Commitment Push Model SCP (issue 3 item 1; PS3.4 Annex J) against a real
``pacsd serve`` process with pynetdicom SCUs: only instances that are indexed (hence
durable) with the right SOP class are committed; the N-EVENT-REPORT comes on the same
association, or on a new one to the calling AE when it released at once."""
from __future__ import annotations

import threading
import time

import pytest
import requests
from dicomgen import make_dataset, multipart, to_part10
from pacsd_server import Server, free_port
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.sop_class import StorageCommitmentPushModel

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
INSTANCE = "1.2.840.10008.1.20.1.1"


def action(refs, transaction: str) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction
    items = []
    for c, i in refs:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = c, i
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def stored(srv: Server) -> list:
    datasets = [make_dataset(seed=n) for n in range(2)]
    body, ctype = multipart([to_part10(d) for d in datasets])
    r = requests.post(srv.url + "/dicom-web/studies", data=body,
                      headers={"Content-Type": ctype}, timeout=30)
    assert r.status_code == 200
    return datasets


def reasons(report: Dataset) -> dict[str, int]:
    return {str(i.ReferencedSOPInstanceUID): int(i.FailureReason)
            for i in report.get("FailedSOPSequence", [])}


def committed(report: Dataset) -> set[str]:
    return {str(i.ReferencedSOPInstanceUID) for i in report.get("ReferencedSOPSequence", [])}


@pytest.fixture
def pacsd(tmp_path):
    scu_port = free_port()
    srv = Server(str(tmp_path), "--peer", f"MODALITY=127.0.0.1:{scu_port}",
                 dicom_port=None)
    srv.scu_port = scu_port
    yield srv
    srv.stop()


def test_commitment_report_on_the_same_association(pacsd):
    datasets = stored(pacsd)
    missing = generate_uid()
    refs = [(CT, d.SOPInstanceUID) for d in datasets] + [
        (CT, missing), (MR, datasets[0].SOPInstanceUID)]
    got: list[tuple[int, Dataset]] = []
    done = threading.Event()

    def on_report(event):
        got.append((int(event.event_type), event.event_information))
        done.set()
        return 0x0000

    ae = AE(ae_title="CT_ROOM_2")  # not in [dimse] peers: same association
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    assoc = ae.associate("127.0.0.1", pacsd.dicom_port,
                         [build_context(StorageCommitmentPushModel)], ae_title="PACSD",
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    assert assoc.is_established
    try:
        transaction = generate_uid()
        status, _ = assoc.send_n_action(action(refs, transaction), 1,
                                        StorageCommitmentPushModel, INSTANCE)
        assert status.Status == 0x0000
        assert done.wait(20), "no N-EVENT-REPORT"
        time.sleep(0.5)  # let our N-EVENT-REPORT-RSP go out before releasing
    finally:
        assoc.release()
        ae.shutdown()
    event_type, report = got[0]
    assert event_type == 2  # some failed
    assert str(report.TransactionUID) == transaction
    # Duplicated UID in refs: the CT reference is committed, the MR one conflicts.
    assert committed(report) == {d.SOPInstanceUID for d in datasets}
    assert reasons(report) == {missing: 0x0112, datasets[0].SOPInstanceUID: 0x0119}


def test_commitment_report_on_a_new_association_and_bad_requests(pacsd):
    datasets = stored(pacsd)
    got: list[tuple[int, Dataset, str]] = []
    done = threading.Event()

    def on_report(event):
        got.append((int(event.event_type), event.event_information,
                    event.assoc.requestor.ae_title.strip()))
        done.set()
        return 0x0000

    listener = AE(ae_title="MODALITY")
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=True,
                                   scp_role=True)
    server = listener.start_server(("127.0.0.1", pacsd.scu_port), block=False,
                                   evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    try:
        assoc = ae.associate("127.0.0.1", pacsd.dicom_port,
                             [build_context(StorageCommitmentPushModel)], ae_title="PACSD")
        assert assoc.is_established
        bad, _ = assoc.send_n_action(action([(CT, datasets[0].SOPInstanceUID)], ""), 1,
                                     StorageCommitmentPushModel, INSTANCE)
        other, _ = assoc.send_n_action(action([], generate_uid()), 1,
                                       StorageCommitmentPushModel, INSTANCE)
        wrong_action, _ = assoc.send_n_action(action([(CT, "1.2.3")], generate_uid()), 7,
                                              StorageCommitmentPushModel, INSTANCE)
        assert (bad.Status, other.Status, wrong_action.Status) == (0x0114, 0x0115, 0x0123)
        transaction = generate_uid()
        status, _ = assoc.send_n_action(
            action([(CT, d.SOPInstanceUID) for d in datasets], transaction), 1,
            StorageCommitmentPushModel, INSTANCE)
        assert status.Status == 0x0000
        assoc.release()  # at once: the report comes on a new association
        assert done.wait(20), "no N-EVENT-REPORT on a new association"
    finally:
        server.shutdown()
        ae.shutdown()
    event_type, report, caller = got[0]
    assert (event_type, caller) == (1, "PACSD")
    assert str(report.TransactionUID) == transaction
    assert committed(report) == {d.SOPInstanceUID for d in datasets}
    assert "FailedSOPSequence" not in report
