"""Fixtures for catalogue/QIDO tests: a Catalogue on SQLite and on real PostgreSQL, and a
``make_instance`` factory producing ParsedInstance objects (no DICOM files needed).

PostgreSQL: 127.0.0.1:5432 as user postgres (override with PACSD_TEST_PG_URL, a URL to an
existing database used only to create/drop ours). One fresh database ``pacsd_test_<hex>``
per test session, dropped at the end; tables are truncated between tests. When the
server is unreachable the postgresql params are skipped with the reason.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from pydicom.datadict import dictionary_VR, tag_for_keyword

from pacsd.index import Catalogue, writes
from pacsd.index.schema import LEVEL_COLUMNS
from pacsd.model import FrameIndex, ParsedInstance

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

DEFAULTS: dict[str, Any] = {
    "PatientID": "P1", "PatientName": "Doe^John", "StudyDate": "20240101",
    "StudyTime": "101500", "Modality": "CT", "SeriesNumber": 1, "InstanceNumber": 1,
    "Rows": 512, "Columns": 512, "BitsAllocated": 16,
}
_LEVEL_OF = {kw: level for level, cols in LEVEL_COLUMNS.items() for kw in cols}


def element(keyword: str, value: Any) -> tuple[str, dict]:
    """(tag, DICOM JSON element) for a keyword and a Python value."""
    tag = tag_for_keyword(keyword)
    vr = dictionary_VR(tag)
    if value is None:
        return f"{tag:08X}", {"vr": vr}
    if vr == "PN":
        groups = str(value).split("=")
        keys = ("Alphabetic", "Ideographic", "Phonetic")
        value = {k: g for k, g in zip(keys, groups) if g}
    return f"{tag:08X}", {"vr": vr, "Value": [value]}


def dicom_json(attrs: dict[str, Any]) -> dict:
    return dict(sorted(element(k, v) for k, v in attrs.items()))


def make_instance(study_uid: str = "1.2.826.0.1.1", series_uid: str | None = None,
                  sop_uid: str | None = None, *, sop_class_uid: str = CT_IMAGE,
                  frames: int | None = None, **attrs: Any) -> ParsedInstance:
    """A ParsedInstance; ``attrs`` are DICOM keywords (None drops a default)."""
    series_uid = series_uid or study_uid + ".1"
    sop_uid = sop_uid or series_uid + ".1"
    values = {k: v for k, v in {**DEFAULTS, **attrs}.items() if v is not None}
    levels: dict[str, dict[str, Any]] = {"patient": {}, "study": {}, "series": {},
                                         "instance": {}}
    for kw, v in values.items():
        levels[_LEVEL_OF[kw]][kw] = v
    study_attrs = {**levels["patient"], **levels["study"], "StudyInstanceUID": study_uid}
    series_attrs = {**levels["series"], "SeriesInstanceUID": series_uid}
    inst_attrs = {**levels["instance"], "SOPInstanceUID": sop_uid,
                  "SOPClassUID": sop_class_uid}
    meta = dicom_json({**study_attrs, **series_attrs, **inst_attrs})
    meta["7FE00010"] = {"vr": "OW", "BulkDataURI": "@@BASE@@/bulk/7FE00010"}
    frame_index = None
    if frames:
        frame_index = FrameIndex(EXPLICIT_LE, False,
                                 tuple(((1000 + i * 100, 100),) for i in range(frames)),
                                 tuple(range(frames)))
    return ParsedInstance(
        study_instance_uid=study_uid, series_instance_uid=series_uid,
        sop_instance_uid=sop_uid, sop_class_uid=sop_class_uid,
        transfer_syntax_uid=EXPLICIT_LE, specific_character_set="ISO_IR 192",
        patient=levels["patient"], study=levels["study"], series=levels["series"],
        instance=levels["instance"],
        study_json=orjson.dumps(dicom_json(study_attrs)),
        series_json=orjson.dumps(dicom_json(series_attrs)),
        instance_json=orjson.dumps(dicom_json(inst_attrs)),
        metadata=orjson.dumps(meta), frames=frame_index,
        bulk={"7FE00010": (1000, 524288)},
    )


def sha_of(p: ParsedInstance, salt: str = "") -> str:
    import hashlib
    return hashlib.sha256((p.sop_instance_uid + salt).encode()).hexdigest()


def store(cat: Catalogue, p: ParsedInstance, salt: str = ""):
    return cat.store_instance(p, sha256=sha_of(p, salt), size=1234)


def bulk_store(cat: Catalogue, instances: list[ParsedInstance]) -> None:
    """Seed many instances through the real store path, in one transaction (test speed)."""
    with cat.engine.connect() as conn:
        conn = conn.execution_options(pacsd_write=True)
        with conn.begin():
            for p in instances:
                writes.store_instance(conn, p, sha_of(p), 1234)


# --- databases ---------------------------------------------------------------------------

@pytest.fixture(scope="session")
def pg_url(pg_server_url) -> str:
    """The session's fresh PostgreSQL database (tests/conftest.py), migrated once."""
    engine = sa.create_engine(pg_server_url)
    with engine.begin() as conn:
        # Test speed only: commits need not wait for the WAL flush (semantics unchanged).
        conn.exec_driver_sql("SET synchronous_commit = off")
    engine.dispose()
    cat = Catalogue(pg_server_url)
    cat.migrate()
    cat.close()
    return pg_server_url


def _truncate(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE instances, series, studies, patients "
                             "RESTART IDENTITY CASCADE")
    engine.dispose()


def empty_db_url(request, backend: str, directory) -> str:
    """A URL to an empty, migrated catalogue database on ``backend``."""
    if backend == "sqlite":
        url = f"sqlite:///{directory / 'index.db'}"
        cat = Catalogue(url)
        cat.migrate()
        cat.close()
        return url
    url = request.getfixturevalue("pg_url")
    _truncate(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    return empty_db_url(request, request.param, tmp_path)


@pytest.fixture
def catalogue(db_url) -> Iterator[Catalogue]:
    cat = Catalogue(db_url, busy_timeout_s=5.0)
    try:
        yield cat
    finally:
        cat.close()
