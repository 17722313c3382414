"""The catalogue schema (SQLAlchemy Core), shared by SQLite and PostgreSQL.

Four levels, surrogate integer keys, UIDs unique. ``schema.py`` always describes the
*current* schema; ``migrations.py`` creates it on a fresh database and upgrades older ones.

Why the columns look the way they do:

* Every attribute of the ``ParsedInstance.patient/study/series/instance`` dicts has a
  snake_case column (:data:`LEVEL_COLUMNS`), so QIDO-RS matching (R-A1) is plain SQL on
  indexed columns and never parses JSON (R-H1: fast on millions of instances).
* Each study keeps its own copy of the patient module (name, birth date, sex) as it
  arrived with the study. Study-level QIDO matches on that copy, so what a query matches is
  exactly what the returned ``study_json`` shows, even when two studies filed under one
  PatientID (no issuer, several hospitals) carry different demographics. ``patients`` holds
  the identity key (PatientID + IssuerOfPatientID), the newest demographics and a study
  counter, for patient-level features.
* Person names get normalised search columns (``*_alpha``, ``*_ideo``, ``*_phon``,
  ``*_words``; rule in ``names.py``), so PN matching is case-insensitive and CJK-aware while
  staying indexable.
* Counters (``num_*``), ``modalities_in_study`` and ``sop_classes_in_study`` are maintained
  in the store/delete transaction under a study row lock, so they are exact under
  concurrency (LD-6) and QIDO never aggregates at query time.
* ``revision``/``updated_at`` on studies and series change on every change below them:
  cheap ETags for metadata and a change feed.
* On PostgreSQL every text column uses collation "C": byte order equals code point order,
  matching is case-sensitive as PS3.4 asks, and one B-tree index serves equality, ranges and
  the prefix ranges ``qido_sql`` emits for wildcards (no ``text_pattern_ops`` twins).
"""
from __future__ import annotations

import sqlalchemy as sa

#: Text column type: plain TEXT on SQLite (BINARY collation), TEXT COLLATE "C" on PostgreSQL.
Text = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
Blob = sa.LargeBinary()
#: Surrogate keys: BIGINT on PostgreSQL (an archive may outlive 2**31 instances); INTEGER on
#: SQLite, where only "INTEGER PRIMARY KEY" aliases the rowid and auto-increments.
Key = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Stamp = sa.DateTime(timezone=True)

metadata = sa.MetaData(naming_convention={
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
})

#: DICOM keyword -> column, per ParsedInstance dict (the contract with pacsd.dicom).
PATIENT_COLUMNS = {
    "PatientID": "patient_id",
    "IssuerOfPatientID": "issuer_of_patient_id",
    "PatientName": "patient_name",
    "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex",
}
STUDY_COLUMNS = {
    "StudyDate": "study_date",
    "StudyTime": "study_time",
    "AccessionNumber": "accession_number",
    "StudyID": "study_id",
    "StudyDescription": "study_description",
    "ReferringPhysicianName": "referring_physician_name",
}
SERIES_COLUMNS = {
    "Modality": "modality",
    "SeriesNumber": "series_number",
    "SeriesDescription": "series_description",
    "BodyPartExamined": "body_part_examined",
    "SeriesDate": "series_date",
    "SeriesTime": "series_time",
    "PerformedProcedureStepStartDate": "performed_procedure_step_start_date",
    "PerformedProcedureStepStartTime": "performed_procedure_step_start_time",
    "InstitutionName": "institution_name",
    "StationName": "station_name",
}
INSTANCE_COLUMNS = {
    "InstanceNumber": "instance_number",
    "Rows": "rows",
    "Columns": "columns",
    "NumberOfFrames": "number_of_frames",
    "BitsAllocated": "bits_allocated",
    "ContentDate": "content_date",
    "ContentTime": "content_time",
}
#: Integer-valued attributes (IS/US); everything else is text.
INTEGER_KEYWORDS = frozenset({
    "SeriesNumber", "InstanceNumber", "Rows", "Columns", "NumberOfFrames", "BitsAllocated",
})
LEVEL_COLUMNS = {
    "patient": PATIENT_COLUMNS, "study": STUDY_COLUMNS,
    "series": SERIES_COLUMNS, "instance": INSTANCE_COLUMNS,
}


#: Study columns of the worklist's visit attributes (R-D2; services/visit.py, migration 6).
WORKLIST_COLUMNS = ("visit_number", "card_number", "ordering_department", "visit_type")


def _pn_columns(prefix: str) -> list[sa.Column]:
    """Normalised person-name search columns (names.search_columns), all indexed except
    ``_words`` (fuzzy matching is a substring search; no B-tree helps)."""
    return [
        sa.Column(f"{prefix}_alpha", Text, index=True),
        sa.Column(f"{prefix}_ideo", Text, index=True),
        sa.Column(f"{prefix}_phon", Text, index=True),
        sa.Column(f"{prefix}_words", Text),
    ]


def _col(keyword: str, column: str, *, index: bool) -> sa.Column:
    typ = sa.Integer() if keyword in INTEGER_KEYWORDS else Text
    return sa.Column(column, typ, index=index)


patients = sa.Table(
    "patients", metadata,
    sa.Column("pk", Key, primary_key=True),
    # Absent PatientID / issuer are stored as '' so the pair can be a unique key.
    sa.Column("patient_id", Text, nullable=False, server_default=""),
    sa.Column("issuer_of_patient_id", Text, nullable=False, server_default=""),
    sa.Column("patient_name", Text),
    *_pn_columns("patient_name"),
    sa.Column("patient_birth_date", Text),
    sa.Column("patient_sex", Text),
    sa.Column("num_studies", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", Stamp, nullable=False),
    sa.Column("updated_at", Stamp, nullable=False),
    sa.UniqueConstraint("patient_id", "issuer_of_patient_id",
                        name="uq_patients_patient_id_issuer"),
)

studies = sa.Table(
    "studies", metadata,
    sa.Column("pk", Key, primary_key=True),
    sa.Column("study_instance_uid", Text, nullable=False, unique=True),
    sa.Column("patient_fk", Key, sa.ForeignKey("patients.pk"), nullable=False,
              index=True),
    # study_date is indexed by ix_studies_order_*; referring_physician_name matches through
    # its normalised columns.
    *[_col(k, c, index=c not in ("study_date", "referring_physician_name"))
      for k, c in STUDY_COLUMNS.items()],
    *_pn_columns("referring_physician_name"),
    # The study's own copy of the patient module (see module docstring).
    sa.Column("patient_name", Text),
    *_pn_columns("patient_name"),
    sa.Column("patient_birth_date", Text, index=True),
    sa.Column("patient_sex", Text, index=True),
    sa.Column("modalities_in_study", Text),      # '\\'-joined, sorted
    sa.Column("sop_classes_in_study", Text),     # '\\'-joined, sorted
    sa.Column("num_series", sa.Integer, nullable=False, server_default="0"),
    sa.Column("num_instances", sa.Integer, nullable=False, server_default="0"),
    sa.Column("study_json", Blob, nullable=False),
    # Where QIDO-RS splices its computed attributes into study_json (R-H1, migration 11;
    # pacsd.dicom.levels.level_json); NULL: the JSON is decoded instead.
    sa.Column("study_cuts", Blob),
    sa.Column("revision", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", Stamp, nullable=False),
    # Not indexed (migration 12): nothing filters or sorts on it, and every stored
    # instance changes it (on PostgreSQL an index on it also rules out HOT updates).
    sa.Column("updated_at", Stamp, nullable=False),
    # Hospital / campus code captured at ingest (R-A12; access_schema.py, migration 5).
    sa.Column("institution", Text, nullable=False, server_default=""),
    # Worklist visit attributes (R-D2; migration 6, services/visit.py): set when the
    # study row is created, from the [worklist] source attributes; each indexed.
    *[sa.Column(c, Text, index=True) for c in WORKLIST_COLUMNS],
    # '\\'-joined sorted BodyPartExamined of the series (like modalities_in_study):
    # study-level body part sort and display (R-D2).
    sa.Column("body_parts_in_study", Text, index=True),
)
# Default QIDO study order is StudyDate desc, StudyTime desc, pk desc, NULLs last on both
# databases. SQLite walks a plain index backwards (NULLs sort first ascending, so last
# when reversed); PostgreSQL needs the order spelled out in the index to do the same.
# The index also carries the three PatientName search columns (migration 13): a name
# match that walks the study order (qido_sql._walk_order, ``Chen*`` at 1M instances)
# tests them in the index and reads the table only for the page's rows (SQLite: trailing
# key columns; PostgreSQL: INCLUDE, an index-only walk).
ORDER_NAME_COLUMNS = ("patient_name_alpha", "patient_name_ideo", "patient_name_phon")
STUDY_ORDER = {
    "sqlite": sa.Index("ix_studies_order_sqlite", studies.c.study_date, studies.c.study_time,
                       studies.c.pk, *[studies.c[c] for c in ORDER_NAME_COLUMNS]
                       ).ddl_if(dialect="sqlite"),
    "postgresql": sa.Index("ix_studies_order_pg", studies.c.study_date.desc().nulls_last(),
                           studies.c.study_time.desc().nulls_last(), studies.c.pk.desc(),
                           postgresql_include=list(ORDER_NAME_COLUMNS)
                           ).ddl_if(dialect="postgresql"),
}
# The same order within one institution (R-A12 scoping, access_schema.py): a scoped QIDO
# page walks this index instead of sorting every study of the institution; it also
# serves institution IN (...) lookups.
INSTITUTION_ORDER = {
    "sqlite": sa.Index("ix_studies_institution_order_sqlite", studies.c.institution,
                       studies.c.study_date, studies.c.study_time, studies.c.pk
                       ).ddl_if(dialect="sqlite"),
    "postgresql": sa.Index("ix_studies_institution_order_pg", studies.c.institution,
                           studies.c.study_date.desc().nulls_last(),
                           studies.c.study_time.desc().nulls_last(), studies.c.pk.desc()
                           ).ddl_if(dialect="postgresql"),
}

series = sa.Table(
    "series", metadata,
    sa.Column("pk", Key, primary_key=True),
    sa.Column("series_instance_uid", Text, nullable=False, unique=True),
    sa.Column("study_fk", Key, sa.ForeignKey("studies.pk"), nullable=False),
    # Modality has no index of its own: ix_series_modality_number below leads with it
    # (migration 15 dropped ix_series_modality, one index write less per series).
    *[_col(k, c, index=c != "modality") for k, c in SERIES_COLUMNS.items()],
    sa.Column("num_instances", sa.Integer, nullable=False, server_default="0"),
    sa.Column("series_json", Blob, nullable=False),
    sa.Column("series_cuts", Blob),  # as studies.study_cuts (migration 11)
    sa.Column("revision", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", Stamp, nullable=False),
    sa.Column("updated_at", Stamp, nullable=False),
)
# Serves the foreign key and the series order within a study (SeriesNumber, pk).
sa.Index("ix_series_study_number", series.c.study_fk, series.c.series_number, series.c.pk)
# Series by Modality in QIDO order (SeriesNumber, pk): a page walks the index instead of
# sorting every series of that modality (issue 6: 7 -> 53 ms from 10k to 100k instances
# before). PostgreSQL sorts NULLs last ascending by default; SQLite (>= 3.30) walks the
# index for NULLS LAST too. Migration 8.
SERIES_MODALITY_ORDER = sa.Index("ix_series_modality_number", series.c.modality,
                                 series.c.series_number, series.c.pk)

instances = sa.Table(
    "instances", metadata,
    sa.Column("pk", Key, primary_key=True),
    sa.Column("sop_instance_uid", Text, nullable=False, unique=True),
    sa.Column("series_fk", Key, sa.ForeignKey("series.pk"), nullable=False),
    # Denormalised study key: study-wide reads, deletes and SOPClassesInStudy matching
    # without a join through series.
    sa.Column("study_fk", Key, sa.ForeignKey("studies.pk"), nullable=False),
    sa.Column("sop_class_uid", Text, nullable=False, index=True),
    sa.Column("transfer_syntax_uid", Text, nullable=False),
    # Rows/Columns/NumberOfFrames/BitsAllocated/InstanceNumber are matchable but carry no
    # index of their own: instance queries are scoped to a study or series in practice, and
    # each index on the largest table costs ingest throughput (R-H1). The scoped query uses
    # ix_instances_series_number.
    *[_col(k, c, index=c in ("content_date",)) for k, c in INSTANCE_COLUMNS.items()],
    sa.Column("instance_json", Blob, nullable=False),
    sa.Column("instance_cuts", Blob),  # as studies.study_cuts (migration 11)
    sa.Column("specific_character_set", Text),
    sa.Column("sha256", Text, nullable=False),
    # Fast read-time digest of the object (store.base.fast_digest, migration 10); NULL:
    # retrieval verifies the SHA-256 (R-H1, R-A6).
    sa.Column("digest", Text),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("metadata", Blob, nullable=False),        # zlib(ParsedInstance.metadata)
    sa.Column("frames", Blob),                          # FrameIndex.to_json() or NULL
    sa.Column("bulk", Blob, nullable=False),            # orjson of ParsedInstance.bulk
    sa.Column("created_at", Stamp, nullable=False),
)
sa.Index("ix_instances_series_number", instances.c.series_fk, instances.c.instance_number,
         instances.c.pk)
sa.Index("ix_instances_study_sop_class", instances.c.study_fk, instances.c.sop_class_uid)
sa.Index("ix_instances_sha256", instances.c.sha256)

schema_version = sa.Table(
    "schema_version", metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("applied_at", Stamp, nullable=False),
)

#: The generation of the rows QIDO-RS study and series pages are made of (R-H1, issue 6):
#: one row, bumped by a trigger on every insert, update and delete of a ``studies`` or
#: ``series`` row, on SQLite only, where writers are serialised anyway (on PostgreSQL a
#: row every writer updates would serialise them; there a kept page is checked by its
#: stamp alone: ``qido_sql.stamp_of``).
qido_generation = sa.Table(
    "qido_generation", metadata,
    sa.Column("pk", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("value", sa.BigInteger, nullable=False),
)
_GENERATION_TRIGGERS = tuple(
    f"CREATE TRIGGER IF NOT EXISTS tr_{table}_{op.lower()}_generation AFTER {op} ON {table} "
    "BEGIN UPDATE qido_generation SET value = value + 1 WHERE pk = 1; END"
    for table in ("studies", "series") for op in ("INSERT", "UPDATE", "DELETE"))


def install_generation(conn: sa.Connection) -> None:
    """The :data:`qido_generation` row and, on SQLite, its triggers (a fresh database and
    migration 14); idempotent."""
    qido_generation.create(conn, checkfirst=True)
    if conn.scalar(sa.select(sa.func.count()).select_from(qido_generation)) == 0:
        conn.execute(sa.insert(qido_generation).values(pk=1, value=0))
    if conn.dialect.name == "sqlite":
        for ddl in _GENERATION_TRIGGERS:
            conn.exec_driver_sql(ddl)


#: The tables migrate() creates on a fresh database, in dependency order.
CATALOGUE_TABLES = (patients, studies, series, instances)
