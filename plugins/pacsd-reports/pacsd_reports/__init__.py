"""pacsd-reports: reports linked to exams (R-C2), built on ``pacsd.plugin_api`` only.

A report arrives as a PDF (``POST /api/v1/plugins/reports/studies/{study}``), is wrapped
as a DICOM Encapsulated PDF in a new series of the same study and stored through the one
ingest path; its state lives in the plugin's table. States: ``preliminary`` (CT and
night-emergency reads), ``final`` (after review), ``replaced`` (a later final of the same
kind supersedes every earlier report of that kind; the objects stay archived). A
preliminary cannot follow a final. A final report is announced as the plugin event
``reports.final`` (other plugins: share link, SMS).

A report may also arrive as a **DICOM SR** (Basic Text / Enhanced / Comprehensive) by
STOW-RS or C-STORE (``sr.py``): when its study becomes stable (``study_stable``), or when
a page asks for the study's reports, the SR is recognised as a report of its study, its
text extracted, its state taken from CompletionFlag / VerificationFlag (COMPLETE +
VERIFIED = final), and a final one announced as ``reports.final`` with the phone from
PatientTelephoneNumbers when the SR carries one. Other plugins read reports with the
event ``reports.lookup`` (payload ``study_uid`` and a list ``into`` that receives one dict
per current report: id, status, kind, source, text, series, sop, created_at).
HL7 ORU reports wait for the HIS interface (issue 7 item 3).
"""
from __future__ import annotations

import datetime as _dt
import io
import time

import orjson
import sqlalchemy as sa
from aiohttp import web
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacsd.plugin_api import (Migration, PluginSchema, api_of, current_actor, errors,
                              hookimpl, note_audit, requires)

__version__ = "0.1.0"
NAME = "reports"
API = "/api/v1/plugins/reports"
KINDS = ("radiology", "ultrasound", "endoscopy", "pathology", "ecg")
STATES = ("preliminary", "final")
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
DEFAULTS = {"max_bytes": 20 * 1024 * 1024}
COPIED = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
          "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber",
          "StudyID", "ReferringPhysicianName", "StudyDescription")
TITLES = {"preliminary": "初步报告 Preliminary report", "final": "正式报告 Final report"}

md = sa.MetaData()
reports = sa.Table(
    "reports_reports", md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_uid", sa.String(64), nullable=False, index=True),
    sa.Column("series_uid", sa.String(64), nullable=False),
    sa.Column("sop_uid", sa.String(64), nullable=False, unique=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_by", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("replaced_by", sa.Integer),
    sa.Column("source", sa.String(8)),     # version 2: pdf | sr
    sa.Column("text", sa.Text),            # version 2: plain text (SR)
)


def _v2(conn) -> None:
    conn.execute(sa.text("ALTER TABLE reports_reports ADD COLUMN source VARCHAR(8)"))
    conn.execute(sa.text("ALTER TABLE reports_reports ADD COLUMN text TEXT"))


@hookimpl
def register_tables():
    # Version 1 had no source / text; a fresh database gets the current table.
    return PluginSchema(NAME, md, (
        Migration(1, "reports_reports", lambda conn: md.create_all(conn)),
        Migration(2, "reports_reports.source, .text (DICOM SR reports, R-C2)", _v2)))


def _row(r) -> dict:
    return {"id": r.id, "study": r.study_uid, "series": r.series_uid, "sop": r.sop_uid,
            "kind": r.kind, "status": r.status, "created_by": r.created_by,
            "created_at": r.created_at, "replaced_by": r.replaced_by,
            "source": r.source or "pdf", "text": r.text or ""}


def list_reports(conn, study: str) -> list[dict]:
    rows = conn.execute(sa.select(reports).where(reports.c.study_uid == study)
                        .order_by(reports.c.id.desc())).all()
    out = [_row(r) for r in rows]
    out.sort(key=lambda r: r["status"] == "replaced")   # current ones first
    return out


def check_transition(conn, study: str, kind: str, status: str) -> None:
    has_final = conn.execute(sa.select(sa.func.count()).select_from(reports).where(
        reports.c.study_uid == study, reports.c.kind == kind,
        reports.c.status == "final")).scalar()
    if status == "preliminary" and has_final:
        raise errors.Conflict("the report is final already; upload a final to amend it")


def record(conn, *, study, series, sop, kind, status, actor, source="pdf", text=None
           ) -> tuple[int, list[int]]:
    """Insert the report; a final replaces every earlier current report of its kind."""
    pk = conn.execute(sa.insert(reports).values(
        study_uid=study, series_uid=series, sop_uid=sop, kind=kind, status=status,
        created_by=actor[:64], created_at=time.time(), source=source,
        text=text)).inserted_primary_key[0]
    replaced: list[int] = []
    if status == "final":
        older = conn.execute(sa.select(reports.c.id).where(
            reports.c.study_uid == study, reports.c.kind == kind, reports.c.id != pk,
            reports.c.status.in_(STATES))).scalars().all()
        if older:
            conn.execute(sa.update(reports).where(reports.c.id.in_(older))
                         .values(status="replaced", replaced_by=pk))
            replaced = list(older)
    return pk, replaced


def encapsulate(attrs: dict, pdf: bytes, *, kind: str, status: str) -> tuple[str, str, bytes]:
    """(SeriesInstanceUID, SOPInstanceUID, Part 10) of the report as Encapsulated PDF."""
    ds = Dataset()
    for kw in COPIED:
        if attrs.get(kw) is not None:
            setattr(ds, kw, attrs[kw])
    now = _dt.datetime.now()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = ENCAPSULATED_PDF, generate_uid()
    ds.SeriesInstanceUID, ds.Modality = generate_uid(), "DOC"
    ds.SeriesNumber, ds.InstanceNumber = 9800, 1
    ds.SeriesDescription = f"Report {kind} ({status})"
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.ConversionType = "WSD"
    ds.DocumentTitle = TITLES[status]
    ds.ContentLabel = status.upper()
    ds.ConceptNameCodeSequence = Sequence()
    ds.BurnedInAnnotation = "YES"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = (ds.SOPClassUID,
                                                                     ds.SOPInstanceUID)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return ds.SeriesInstanceUID, ds.SOPInstanceUID, out.getvalue()


def pdf_of(part10: bytes) -> bytes:
    ds = dcmread(io.BytesIO(part10))
    data = bytes(ds.EncapsulatedDocument)
    n = ds.get("EncapsulatedDocumentLength")
    return data[:int(n)] if n else data


async def _read_pdf(request, limit: int) -> bytes:
    if request.content_type != "application/pdf":
        raise errors.UnsupportedMediaType("send the report as application/pdf")
    chunks, size = [], 0
    while chunk := await request.content.read(65536):
        size += len(chunk)
        if size > limit:
            raise errors.PayloadTooLarge(f"a report is at most {limit} bytes")
        chunks.append(chunk)
    pdf = b"".join(chunks)
    if not pdf.startswith(b"%PDF-"):
        raise errors.BadRequest("the body is not a PDF")
    return pdf


@requires("write", audit="reports.uploaded")
async def upload(request: web.Request) -> web.Response:
    """POST .../studies/{study}?status=preliminary|final&kind=radiology[&phone=...]"""
    api = api_of(request)
    study = request.match_info["study"]
    status = request.query.get("status", "final")
    kind = request.query.get("kind", "radiology")
    if status not in STATES or kind not in KINDS:
        raise errors.BadRequest("status is preliminary or final; kind is one of "
                                + ", ".join(KINDS))
    limit = int({**DEFAULTS, **api.plugin_settings(NAME)}["max_bytes"])
    pdf = await _read_pdf(request, limit)
    rows = await api.instances(study)                      # 404 for an unknown study
    await api.run(api.read, lambda c: check_transition(c, study, kind, status))
    ds = dcmread(io.BytesIO(await api.read_instance(rows[0])), stop_before_pixels=True)
    attrs = {kw: ds.get(kw) for kw in COPIED if kw in ds}
    series, sop, part10 = encapsulate(attrs, pdf, kind=kind, status=status)
    await api.store_instance(part10, expected_study_uid=study)
    actor = current_actor(request).id
    pk, replaced = await api.run(api.write, lambda c: record(
        c, study=study, series=series, sop=sop, kind=kind, status=status, actor=actor))
    note_audit(request, studies={study: 1}, report=pk, status=status, kind=kind,
               replaced=replaced)
    if status == "final":
        # Other plugins take it from here (share link, SMS). The phone number, when
        # given, travels in the event only; it is not stored by this plugin.
        await api.emit("reports.final", study_uid=study, report_id=pk, kind=kind,
                       phone=request.query.get("phone", ""))
    body = {"id": pk, "study": study, "series": series, "sop": sop, "kind": kind,
            "status": status, "replaced": replaced}
    return web.Response(body=orjson.dumps(body), status=201, content_type="application/json")


@requires("read", audit="query")
async def listing(request: web.Request) -> web.Response:
    api = api_of(request)
    study = request.match_info["study"]
    rows = await api.run(api.read, lambda c: list_reports(c, study))
    note_audit(request, results=len(rows))
    return web.Response(body=orjson.dumps({"reports": rows}),
                        content_type="application/json", headers={"Cache-Control": "no-store"})


@requires("read", audit="study-read")
async def download(request: web.Request) -> web.Response:
    api = api_of(request)
    study = request.match_info["study"]
    try:
        pk = int(request.match_info["id"])
    except ValueError:
        raise errors.NotFound("no such report") from None
    rows = await api.run(api.read, lambda c: list_reports(c, study))
    match = [r for r in rows if r["id"] == pk]
    if not match:
        raise errors.NotFound("no such report")
    r = match[0]
    if r["source"] == "sr":
        raise errors.NotFound("this report is a DICOM SR: its text is in the listing")
    row = await api.instance(study, r["series"], r["sop"])
    pdf = pdf_of(await api.read_instance(row))
    note_audit(request, object_count=1, report=pk)
    return web.Response(body=pdf, content_type="application/pdf",
                        headers={"Cache-Control": "no-store",
                                 "X-Report-Status": r["status"]})


# --- DICOM SR reports (R-C2) ------------------------------------------------------------

KIND_OF_MODALITY = {"US": "ultrasound", "ES": "endoscopy", "ECG": "ecg", "SM": "pathology",
                    "GM": "pathology"}


async def scan(api, study: str) -> list[dict]:
    """Record the study's SRs not yet known as reports; returns the new reports. Safe to
    run twice (the SOP Instance UID is unique in the table)."""
    from .sr import SR_CLASSES, status_of, text_of

    # One query for every SR class (UID list matching), not one per class: each study
    # that becomes stable is scanned, so a bulk import pays this once per study.
    found = await api.search("instance", {"SOPClassUID": "\\".join(SR_CLASSES)},
                             study_uid=study)
    if not found:
        return []
    known = {r["sop"] for r in await api.run(api.read, lambda c: list_reports(c, study))}
    modalities = {str(m) for s in await api.search(
        "study", {"StudyInstanceUID": study, "includefield": "00080061"})
        for m in (s.get("00080061", {}).get("Value") or [])}
    kind = next((KIND_OF_MODALITY[m] for m in modalities if m in KIND_OF_MODALITY),
                "radiology")
    new = []
    for item in found:
        sop = (item.get("00080018", {}).get("Value") or [""])[0]
        series = (item.get("0020000E", {}).get("Value") or [""])[0]
        if not sop or sop in known:
            continue
        row = await api.instance(study, series, sop)
        ds = dcmread(io.BytesIO(await api.read_instance(row)), stop_before_pixels=True)
        status, text = status_of(ds), text_of(ds)
        tel = ds.get("PatientTelephoneNumbers") or ""
        phone = str(tel if isinstance(tel, str) else (list(tel) or [""])[0])

        def put(c, sop=sop, series=series, status=status, text=text):
            if c.execute(sa.select(reports.c.id).where(reports.c.sop_uid == sop)).first():
                return None
            has_final = c.execute(sa.select(reports.c.id).where(
                reports.c.study_uid == study, reports.c.kind == kind,
                reports.c.status == "final")).first()
            # a preliminary arriving after the final is kept, as replaced already
            st = "replaced" if status == "preliminary" and has_final else status
            return record(c, study=study, series=series, sop=sop, kind=kind, status=st,
                          actor="dicom-sr", source="sr", text=text)
        done = await api.run(api.write, put)
        if done is None:
            continue
        pk, replaced = done
        api.audit("reports.recognised", study_uid=study,
                  detail={"report": pk, "status": status, "kind": kind, "source": "sr",
                          "replaced": replaced})
        new.append({"id": pk, "status": status})
        if status == "final":
            await api.emit("reports.final", study_uid=study, report_id=pk, kind=kind,
                           phone=phone)
    return new


@hookimpl
def study_stable(api, study_uid):
    return scan(api, study_uid)


async def _lookup(api, study: str, into: list) -> None:
    await scan(api, study)
    rows = await api.run(api.read, lambda c: list_reports(c, study))
    into.extend(r for r in rows if r["status"] != "replaced")


@hookimpl
def plugin_event(api, event, payload):
    if event == "reports.lookup" and isinstance(payload.get("into"), list):
        return _lookup(api, str(payload.get("study_uid", "")), payload["into"])
    return None


@hookimpl
def register_routes(router, settings):
    router.add_post(API + "/studies/{study}", upload)
    router.add_get(API + "/studies/{study}", listing)
    router.add_get(API + "/studies/{study}/{id}.pdf", download)
