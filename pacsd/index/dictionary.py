"""The data dictionary of the catalogue database (R-E8): every core table and column.

``DESCRIPTIONS`` says what each table is for and what each column means (units, allowed
values, which code writes it); ``PHI``, ``HASHED`` and ``CLEARTEXT_SECRETS`` classify the
columns for security reviews. ``python -m pacsd.index.dictionary`` writes
``docs/data-dictionary.md`` from these and from the SQLAlchemy metadata itself (types on
SQLite and PostgreSQL, nullability, defaults, keys, indexes, unique constraints, the
migration list), so the document cannot drift from the code; ``--check`` exits 1 and
names what differs when the committed file is stale. ``tests/docs/test_data_dictionary.py``
fails when a table or column has no description, when a description names a column that
does not exist, or when the committed document is stale.

Plugin tables (``pacsd/index/plugin_tables.py``, R-E6) live in each plugin's own
``MetaData`` and are documented by that plugin.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import pkgutil
import sys
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as _pg
from sqlalchemy.dialects import sqlite as _sqlite

#: The document the generator writes, relative to the repository root.
DOC_PATH = "docs/data-dictionary.md"

_PN = ("normalised search form of {what} (rule in index/names.py; written by index/writes.py "
       "with the name, rewritten by index/versions.py on a correction)")


def _pn(prefix: str, what: str, table: str) -> dict[str, str]:
    base = _PN.format(what=what)
    ix = " Not indexed (fuzzy matching is a LIKE '% word%' search)."
    return {
        f"{table}.{prefix}_alpha": f"Alphabetic group, {base}: NFKC, case-folded, '^' and "
                                   "spaces removed; NULL when the group is empty.",
        f"{table}.{prefix}_ideo": f"Ideographic group (e.g. Hanzi), {base}; NULL when empty.",
        f"{table}.{prefix}_phon": f"Phonetic group, {base}; NULL when empty.",
        f"{table}.{prefix}_words": "Space-led, space-separated list of every compact word and "
                                   f"whole group of {what}, for fuzzymatching=true prefix "
                                   f"matching.{ix}",
    }


DESCRIPTIONS: dict[str, str] = {
    # --- catalogue (schema.py, migration 1) ------------------------------------------------
    "patients": "One row per patient identity key (PatientID + IssuerOfPatientID), with the "
                "demographics of the newest study filed under it and a study counter. QIDO-RS "
                "matches PatientID/IssuerOfPatientID here and every other patient attribute on "
                "the study's own copy (studies.patient_*). Written only by index/writes.py "
                "(store/delete) and index/versions.py (corrections, patient merge); a row is "
                "deleted when its last study goes. Its PN search columns "
                "(patient_name_alpha/_ideo/_phon/_words) are written but no query reads them "
                "today.",
    "patients.pk": "Surrogate key.",
    "patients.patient_id": "PatientID (0010,0020) as received; '' when absent, so the pair with "
                           "the issuer can be a unique key.",
    "patients.issuer_of_patient_id": "IssuerOfPatientID (0010,0021); '' when absent.",
    "patients.patient_name": "PatientName (0010,0010) in DICOM PN form 'Alphabetic=Ideographic="
                             "Phonetic', decoded to Unicode; of the newest study stored or "
                             "corrected under this key. Informational: QIDO matches "
                             "studies.patient_name.",
    **_pn("patient_name", "patients.patient_name", "patients"),
    "patients.patient_birth_date": "PatientBirthDate (0010,0030), 'YYYYMMDD' text as received "
                                   "(newest study's).",
    "patients.patient_sex": "PatientSex (0010,0040): M, F, O or as received (newest study's).",
    "patients.num_studies": "Number of studies filed under this key; +1 when a study is "
                            "created, -1 when one is deleted or moved (index/writes.py, "
                            "index/versions.py); the row is removed at 0.",
    "patients.created_at": "When the row was created (timestamp with time zone, UTC).",
    "patients.updated_at": "Last change of the counter or demographics (UTC).",

    "studies": "One row per study (StudyInstanceUID): the study attributes QIDO-RS matches, "
               "the study's own copy of the patient module, exact counters and lists kept in "
               "the store/delete transaction under the study row lock (LD-6), the stored "
               "study-level DICOM JSON QIDO answers from, the institution used for data "
               "scoping (R-A12) and the worklist columns (R-D2). Written by index/writes.py "
               "(ingest, delete), index/versions.py (corrections), index/worklist.py "
               "(migration 6, reindex) and index/lifecycle.py (HIS visit class).",
    "studies.pk": "Surrogate key.",
    "studies.study_instance_uid": "StudyInstanceUID (0020,000D). Unique.",
    "studies.patient_fk": "The patient identity record (patients.pk) the study is filed under; "
                          "changed only by a correction of PatientID/issuer (index/versions.py).",
    "studies.study_date": "StudyDate (0008,0020), 'YYYYMMDD' text; NULL when absent. Indexed "
                          "through ix_studies_order_* (the default QIDO order).",
    "studies.study_time": "StudyTime (0008,0030) as received (HHMMSS.FFFFFF text).",
    "studies.accession_number": "AccessionNumber (0008,0050), the RIS order number.",
    "studies.study_id": "StudyID (0020,0010).",
    "studies.study_description": "StudyDescription (0008,1030), free text from the modality.",
    "studies.referring_physician_name": "ReferringPhysicianName (0008,0090), PN form; matched "
                                        "through its normalised columns.",
    **_pn("referring_physician_name", "studies.referring_physician_name", "studies"),
    "studies.patient_name": "The study's own copy of PatientName (0010,0010) as it arrived with "
                            "the study (PN form, Unicode): what QIDO-RS matches and returns.",
    **_pn("patient_name", "studies.patient_name", "studies"),
    "studies.patient_birth_date": "The study's copy of PatientBirthDate (0010,0030), "
                                  "'YYYYMMDD' text.",
    "studies.patient_sex": "The study's copy of PatientSex (0010,0040).",
    "studies.modalities_in_study": "ModalitiesInStudy: the distinct series Modality values, "
                                   "sorted and '\\'-joined; NULL when none. Kept exact by "
                                   "index/writes.py.",
    "studies.sop_classes_in_study": "SOPClassesInStudy: the distinct SOP Class UIDs of the "
                                    "study's instances, sorted and '\\'-joined.",
    "studies.num_series": "NumberOfStudyRelatedSeries, exact (index/writes.py).",
    "studies.num_instances": "NumberOfStudyRelatedInstances, exact (index/writes.py).",
    "studies.study_json": "orjson bytes of the study-level DICOM JSON object (patient and study "
                          "modules of the first instance stored in the study; PS3.18 Table "
                          "10.6.3-3 and the modules' other attributes) that QIDO-RS returns. "
                          "Rewritten by a correction.",
    "studies.study_cuts": "Where QIDO-RS splices its computed attributes into study_json "
                          "(pacsd.dicom.levels.level_json; migration 11); NULL for rows stored "
                          "before it, whose JSON is decoded instead.",
    "studies.revision": "Incremented on every change of the study or anything below it: a cheap "
                        "ETag for metadata and a change feed.",
    "studies.created_at": "When the study row was created (UTC).",
    "studies.updated_at": "Last change of the study or anything below it (UTC); with revision "
                          "the ETag / Last-Modified of its metadata (catalogue.py). Not "
                          "indexed: no query filters or sorts on it (migration 12 dropped "
                          "ix_studies_updated_at).",
    "studies.institution": "Hospital / campus code of the study (R-A12 data scoping), captured "
                           "once when the row is created, from [security] "
                           "institution_attribute (default InstitutionName) mapped by "
                           "institution_map; '' when none. Migration 5 backfilled it from the "
                           "series' InstitutionName.",
    "studies.visit_number": "Worklist visit number (R-D2; services/visit.py): [worklist] "
                            "visit_number_attribute, default AdmissionID (0038,0010); at most "
                            "64 characters; NULL when absent. Migration 6; `pacsd worklist "
                            "reindex` refills it.",
    "studies.card_number": "Worklist card number (R-D2): [worklist] card_number_attribute, "
                           "default the first OtherPatientIDsSequence item's PatientID.",
    "studies.ordering_department": "Worklist ordering department (R-D2): [worklist] "
                                   "department_attribute, default RequestingService "
                                   "(0032,1033).",
    "studies.visit_type": "Worklist visit type (R-D2): outpatient, inpatient, emergency, "
                          "physical-exam or NULL (unknown), mapped from [worklist] "
                          "visit_type_attribute; a HIS visit class from "
                          "study_retention.visit_class wins (index/writes.py his_visit, "
                          "index/lifecycle.py set_visit).",
    "studies.body_parts_in_study": "The distinct series BodyPartExamined values, sorted and "
                                   "'\\'-joined (like modalities_in_study): study-level body "
                                   "part sort and display (R-D2, migration 6).",

    "series": "One row per series (SeriesInstanceUID) with the series attributes QIDO-RS "
              "matches, an exact instance counter and the stored series-level DICOM JSON. "
              "Written by index/writes.py; revisions bumped by index/versions.py.",
    "series.pk": "Surrogate key.",
    "series.series_instance_uid": "SeriesInstanceUID (0020,000E). Unique.",
    "series.study_fk": "The study (studies.pk); a series never moves between studies (BI-27).",
    "series.modality": "Modality (0008,0060), e.g. CT, MR, DX.",
    "series.series_number": "SeriesNumber (0020,0011) as an integer; NULL when absent or not "
                            "an integer.",
    "series.series_description": "SeriesDescription (0008,103E), free text.",
    "series.body_part_examined": "BodyPartExamined (0018,0015).",
    "series.series_date": "SeriesDate (0008,0021), 'YYYYMMDD' text.",
    "series.series_time": "SeriesTime (0008,0031) as received.",
    "series.performed_procedure_step_start_date": "PerformedProcedureStepStartDate "
                                                  "(0040,0244), 'YYYYMMDD' text.",
    "series.performed_procedure_step_start_time": "PerformedProcedureStepStartTime "
                                                  "(0040,0245) as received.",
    "series.institution_name": "InstitutionName (0008,0080) as received (the source of "
                               "studies.institution by default).",
    "series.station_name": "StationName (0008,1010): the modality's station.",
    "series.num_instances": "NumberOfSeriesRelatedInstances, exact (index/writes.py).",
    "series.series_json": "orjson bytes of the series-level DICOM JSON object QIDO-RS returns "
                          "(PS3.18 Table 10.6.3-4 and the module's other attributes).",
    "series.series_cuts": "Where QIDO-RS splices computed attributes into series_json "
                          "(migration 11); NULL: decoded instead.",
    "series.revision": "Incremented on every change below the series (ETag of its metadata).",
    "series.created_at": "When the series row was created (UTC).",
    "series.updated_at": "Last change below the series (UTC).",

    "instances": "One row per stored SOP instance: the current version of the object (blob "
                 "reference by SHA-256, size, transfer syntax), the attributes instance-level "
                 "QIDO-RS matches, the instance-level JSON, the full metadata (WADO-RS "
                 "metadata) and where bulk data and frames lie in the stored file. Written by "
                 "index/writes.py at ingest; a correction (index/versions.py) points the row "
                 "at the new blob and keeps the old one in instance_versions.",
    "instances.pk": "Surrogate key.",
    "instances.sop_instance_uid": "SOPInstanceUID (0008,0018). Unique: an instance is stored "
                                  "once; a different object under the same UID is refused "
                                  "(BI-26).",
    "instances.series_fk": "The series (series.pk).",
    "instances.study_fk": "The study (studies.pk), denormalised: study-wide reads, deletes "
                          "and SOPClassesInStudy matching without a join through series.",
    "instances.sop_class_uid": "SOPClassUID (0008,0016).",
    "instances.transfer_syntax_uid": "Transfer syntax the object is stored in (as received, "
                                     "or the lossless syntax of [storage] compress).",
    "instances.instance_number": "InstanceNumber (0020,0013) as an integer; NULL when absent "
                                 "or not an integer.",
    "instances.rows": "Rows (0028,0010), pixels.",
    "instances.columns": "Columns (0028,0011), pixels.",
    "instances.number_of_frames": "NumberOfFrames (0028,0008); 1 for an image without the "
                                  "attribute, NULL for an object without pixel data "
                                  "(dicom/parse.py).",
    "instances.bits_allocated": "BitsAllocated (0028,0100).",
    "instances.content_date": "ContentDate (0008,0023), 'YYYYMMDD' text.",
    "instances.content_time": "ContentTime (0008,0033) as received.",
    "instances.instance_json": "orjson bytes of the instance-level DICOM JSON object QIDO-RS "
                               "returns (PS3.18 Table 10.6.3-5).",
    "instances.instance_cuts": "Where QIDO-RS splices computed attributes into instance_json "
                               "(migration 11); NULL: decoded instead.",
    "instances.specific_character_set": "SpecificCharacterSet (0008,0005) of the object, as "
                                        "received; NULL or '' means the default repertoire.",
    "instances.sha256": "SHA-256 (hex) of the object's bytes (the plaintext when encrypted at "
                        "rest, store/crypto.py): its name in the content-addressed blob "
                        "store and the arbiter of scrub, repair and retrieval checks (R-A6). "
                        "Not a secret.",
    "instances.digest": "Fast read-time digest 'xxh3-128:<hex>:<sha256 prefix>' "
                        "(store.base.fast_digest, migration 10), computed at ingest; NULL "
                        "(rows before migration 10, or reset by a correction): retrieval "
                        "verifies the SHA-256.",
    "instances.size": "Size of the stored object in bytes.",
    "instances.metadata": "zlib-compressed orjson of the instance's full DICOM JSON object "
                          "(WADO-RS metadata); BulkDataURI values start with the placeholder "
                          "'@@BASE@@' (model.BULK_BASE), replaced when served. Also read by "
                          "the worklist reindex.",
    "instances.frames": "FrameIndex.to_json(): file offset/length ranges and CRC-32 of each "
                        "frame in the stored file (frame retrieval by byte range); NULL when "
                        "the object has no pixel data.",
    "instances.bulk": "orjson map of tag (8 hex digits) -> (file offset, length) of each bulk "
                      "data element's value in the stored file; empty for deflated objects "
                      "(inflated offsets are not file offsets).",
    "instances.created_at": "When this version of the instance was stored (UTC); set anew by "
                            "a correction.",

    "qido_generation": "One row (pk 1): the generation of the studies and series rows "
                       "(R-H1). On SQLite, triggers on studies and series (migration 14) "
                       "add 1 on every insert, update and delete; QIDO-RS serves a kept "
                       "page of studies or series while it has not changed "
                       "(services/query.py Answers). Not maintained on PostgreSQL.",
    "qido_generation.pk": "Always 1.",
    "qido_generation.value": "Changes of studies and series rows since the database was "
                             "created or migrated (SQLite); 0 on PostgreSQL.",

    "schema_version": "One row per applied core migration (migrations.py): the schema version "
                      "of the database. A fresh database records every known version at once "
                      "(\"stamp head\").",
    "schema_version.version": "Migration number (see the list at the top of this document).",
    "schema_version.description": "The migration's one-line description.",
    "schema_version.applied_at": "When it was applied or stamped (UTC).",

    # --- security (security_schema.py, migration 2; columns of migration 5) --------------
    "users": "Local accounts (R-E1, MLPS 1-5): roles, password hash and history, lockout "
             "state, TOTP second factor, data scope (R-A12) and department. Written by "
             "index/accounts.py for services/security.py (CLI `pacsd user`, admin API) and "
             "services/oidc.py (first OIDC login).",
    "users.pk": "Surrogate key; audit events name a user as 'user:<pk>'.",
    "users.username": "Login name (checked by services/security.check_username). Unique.",
    "users.roles": "Comma-separated role names from services.security.ROLES.",
    "users.password_hash": "argon2id hash of the password (never the password, MLPS 1); "
                           "rehashed at login when the hasher's parameters change.",
    "users.created_at": "Account creation, POSIX seconds.",
    "users.password_changed_at": "Last password change, POSIX seconds.",
    "users.failed_logins": "Consecutive failed logins (wrong password or second factor); "
                           "reset to 0 on success, unlock or when the lockout starts.",
    "users.locked_until": "Lockout end (POSIX seconds) after [security] lockout_threshold "
                          "failures (MLPS 2); NULL when not locked.",
    "users.last_login_at": "Last successful login, POSIX seconds; with created_at and "
                           "reactivated_at it drives the inactivity disable (MLPS 5).",
    "users.disabled": "Account disabled (by an administrator, or after [security] "
                      "inactive_disable_days without a login).",
    "users.institutions": "Comma-separated institution codes the user may see (R-A12, "
                          "migration 5); NULL = [security] default_institutions; '*' = all.",
    "users.clearances": "Comma-separated sensitivity labels (study_labels.label) the user may "
                        "see (MLPS 8, migration 5); '' = none.",
    "users.totp_secret": "Base32 TOTP secret of the second factor (MLPS 4, migration 5; "
                         "services/totp.py); NULL when not enrolled. TOTP needs it to compute "
                         "codes, so it cannot be hashed: sealed ('sealed1:<kid>:...', "
                         "services/sealing.py) when [encryption] is on, else in clear.",
    "users.totp_last_step": "Last TOTP time step accepted (replay protection: a code works "
                            "once); reset to NULL when the secret changes.",
    "users.department": "Name of the user's department (departments.name; R-E1, migration 5); "
                        "not a foreign key.",
    "users.password_history": "JSON list of previous argon2id password hashes, newest first: "
                              "with password_hash, the last [security] password_history "
                              "passwords, which a new one must differ from (MLPS 1, "
                              "migration 5).",
    "users.must_change_password": "The password was set by an administrator: the user must "
                                  "change it at the next login (MLPS 1, migration 5).",
    "users.reactivated_at": "When a disabled account was enabled again (restarts the "
                            "inactivity clock, MLPS 5, migration 5), POSIX seconds.",

    "api_tokens": "API tokens (bearer 'pacsd-t-...' tokens) of users for scripts and "
                  "integrations: scopes, expiry, revocation. The token is shown once and only "
                  "its SHA-256 is kept (SEC-10). Written by index/accounts.py for "
                  "services/security.py.",
    "api_tokens.pk": "Surrogate key; audit events name a token as 'token:<pk>'.",
    "api_tokens.user_fk": "The owning user (users.pk).",
    "api_tokens.name": "Free label given at creation (at most 64 characters).",
    "api_tokens.token_sha256": "SHA-256 (hex) of the token; looked up on every bearer "
                               "request. Unique.",
    "api_tokens.scopes": "Comma-separated actions: read, write, delete, audit-read, admin.",
    "api_tokens.created_at": "Creation, POSIX seconds.",
    "api_tokens.expires_at": "Expiry, POSIX seconds (at most [security] token_max_days).",
    "api_tokens.revoked_at": "Revocation time, POSIX seconds; NULL while valid.",
    "api_tokens.last_used_at": "Last use (updated at most once a minute), POSIX seconds.",
    "api_tokens.institutions": "Comma-separated institution codes narrowing the user's "
                               "(never widening; migration 5); NULL = the user's.",

    "sessions": "Login sessions of the web UI and API (MLPS 2): idle and absolute timeouts, "
                "revocation at logout. Only the SHA-256 of the session token is kept. Written "
                "by index/accounts.py; a row is deleted a day after the session ended (expired "
                "or revoked; MLPS 21), at a later login (services/security.py SESSION_KEEP_S).",
    "sessions.pk": "Surrogate key; audit detail names it 'session:<pk>'.",
    "sessions.user_fk": "The user (users.pk).",
    "sessions.token_sha256": "SHA-256 (hex) of the session token ('pacsd-s-...'). Unique.",
    "sessions.created_at": "Login time, POSIX seconds.",
    "sessions.last_seen_at": "Last request (updated at most once per min(60 s, idle "
                             "timeout / 10)), for the idle timeout.",
    "sessions.expires_at": "Absolute end ([security] session_absolute_timeout_s after login).",
    "sessions.revoked_at": "Logout / revocation time; NULL while open.",
    "sessions.source_ip": "Client address at login (at most 64 characters).",

    "audit_events": "The append-only, hash-chained audit trail (R-E3, R-E4, SEC-22, MLPS 11): "
                    "one row per audited event (docs/audit-events.md). seq has no gaps; "
                    "hash = SHA-256 of the canonical row (index/audit_log.FIELDS) and "
                    "prev_hash. By design no patient data: the object of an event is a "
                    "StudyInstanceUID and a count. Written only by index/audit_log.py for "
                    "services/audit.py; rows are removed only by `pacsd audit prune` "
                    "(retention, audit_anchor).",
    "audit_events.seq": "Sequence number assigned by pacsd: 1, 2, 3 ... without gaps.",
    "audit_events.event_time": "ISO 8601 UTC text with microseconds ('...Z'), part of the "
                               "hashed record (text so it reads back byte-identical).",
    "audit_events.event_type": "Event type, e.g. login, login-failed, instances-stored, "
                               "study-read, delete (docs/audit-events.md lists all).",
    "audit_events.outcome": "success, failure or denied.",
    "audit_events.actor": "Who: 'user:<pk>', 'token:<pk>', 'ae:<AE title>', 'local' (CLI), "
                          "'system:audit' (housekeeping) or 'anonymous'.",
    "audit_events.actor_name": "The actor's user name or AE title at the time (at most 64 "
                               "characters).",
    "audit_events.source_ip": "Client address (at most 64 characters).",
    "audit_events.device": "User-Agent of an HTTP client or calling AE title (at most 128 "
                           "characters).",
    "audit_events.study_uid": "StudyInstanceUID the event concerns; NULL when none. Indexed "
                              "(migration 7) for the auditor's filters.",
    "audit_events.object_count": "Number of instances (or rows) concerned; NULL when not "
                                 "applicable.",
    "audit_events.location": "Storage location (store URL) of the objects concerned (R-E3).",
    "audit_events.detail": "JSON object with event-specific fields (sorted keys); never "
                           "patient data.",
    "audit_events.prev_hash": "hash of the previous event (64 zeros before seq 1).",
    "audit_events.hash": "SHA-256 (hex) over the canonical row and prev_hash: the chain link "
                         "`pacsd audit verify` checks. Not a secret.",

    "audit_head": "One row (id 1): the last seq and hash of the audit trail, updated in the "
                  "same transaction as each append, so deleting rows at the tail is detected "
                  "(index/audit_log.py).",
    "audit_head.id": "Always 1.",
    "audit_head.last_seq": "seq of the newest event.",
    "audit_head.last_hash": "hash of the newest event.",

    "audit_anchor": "One row (id 1) once events were pruned (retention, MLPS 13; migration 7): "
                    "where the hash chain now starts. No row: nothing pruned. Written by "
                    "index/audit_log.py prune.",
    "audit_anchor.id": "Always 1.",
    "audit_anchor.seq": "seq of the last pruned event.",
    "audit_anchor.hash": "Its hash: the first kept event's prev_hash must equal it.",
    "audit_anchor.pruned_before": "event_time bound of the last prune (ISO 8601 UTC text).",
    "audit_anchor.pruned_rows": "Rows removed by all prunes together.",
    "audit_anchor.pruned_at": "When the last prune ran (ISO 8601 UTC text).",

    "audit_cursors": "Per audit export sink, the last event delivered, so a sink that was down "
                     "resumes where it stopped (at-least-once; migration 7). Written by "
                     "services/audit_syslog.py through index/audit_log.py.",
    "audit_cursors.sink": "Sink name ('syslog').",
    "audit_cursors.last_seq": "seq of the last event the sink acknowledged.",
    "audit_cursors.updated_at": "When the cursor moved (ISO 8601 UTC text).",

    # --- access scoping (access_schema.py, migration 5) -----------------------------------
    "study_labels": "Sensitivity labels of studies (VIP, psychiatry ...; MLPS 8, R-A12): a "
                    "study with a label outside the caller's clearances is not found. Keyed "
                    "by StudyInstanceUID text, so a label survives delete and re-ingest and "
                    "can be set before the study arrives. Written by index/access.py for "
                    "services/security.py (admin API).",
    "study_labels.study_instance_uid": "The study's StudyInstanceUID (not a foreign key).",
    "study_labels.label": "Label: 1-32 letters, digits, '-', '_' or '.' (access.check_label).",
    "study_labels.set_at": "When it was set, POSIX seconds.",
    "study_labels.set_by": "Actor id that set it (at most 64 characters).",

    "departments": "Departments of the hospital for user administration (R-E1): create, "
                   "rename, delete (refused while users belong to it). Written by "
                   "index/accounts.py.",
    "departments.pk": "Surrogate key.",
    "departments.name": "Department name; users.department holds it. Unique.",
    "departments.description": "Free description.",
    "departments.created_at": "Creation, POSIX seconds.",

    # --- jobs and forwarding (jobs_schema.py, forward_schema.py, migration 3) -------------
    "jobs": "The persistent job queue (R-B2): retries with backoff, leases so work resumes "
            "after a crash, dead letters. Written by index/jobs.py for services/jobs.py "
            "(forwarding, pulls from a peer, plugin jobs).",
    "jobs.pk": "Surrogate key: the job id of the API.",
    "jobs.kind": "Handler name, e.g. 'forward.study' (services/forward.py), 'pull.study.*' "
                 "(import_pull.py) or a plugin's kind.",
    "jobs.payload": "JSON arguments of the handler (e.g. destination and StudyInstanceUID); "
                    "by contract no patient data.",
    "jobs.dedupe_key": "At most one queued job per key (partial unique index); enqueueing a "
                       "queued key returns that job. NULL: no de-duplication.",
    "jobs.state": "queued, running, done or dead (dead letter).",
    "jobs.attempts": "Number of claims so far (a job that crashes its worker still ends "
                     "dead).",
    "jobs.max_attempts": "Claims allowed before the dead-letter state.",
    "jobs.run_at": "Not before this time (POSIX seconds): enqueue delay or retry backoff.",
    "jobs.lease_until": "While running: the lease end; an expired lease makes the job "
                        "claimable again. NULL otherwise.",
    "jobs.lease_token": "Random per claim; completing or failing with an outdated token "
                        "changes nothing. NULL when not leased.",
    "jobs.leased_by": "Worker id ('<host>:<pid>:<id>', services/jobs.py) that holds or last "
                      "held the lease.",
    "jobs.created_at": "Enqueue time, POSIX seconds.",
    "jobs.updated_at": "Last state change, POSIX seconds.",
    "jobs.finished_at": "When it became done or dead; NULL before.",
    "jobs.last_error": "Why the last attempt failed (PHI-free reason); '' when none.",

    "forward_studies": "Per (destination, study): the upload clock of store-and-forward from "
                       "the first arrival to the confirmed delivery of every routed instance "
                       "(R-A9 SLA alert). Written by index/forward_log.py for "
                       "services/forward.py.",
    "forward_studies.pk": "Surrogate key.",
    "forward_studies.destination": "Destination name from the [forward] rules.",
    "forward_studies.study_uid": "StudyInstanceUID.",
    "forward_studies.first_received_at": "First arrival of this upload, POSIX seconds (reset "
                                         "when more arrives after a delivery).",
    "forward_studies.last_received_at": "Latest arrival, POSIX seconds.",
    "forward_studies.delivered_at": "When everything routed was confirmed sent; NULL while "
                                    "open (reset to NULL when a new instance arrives).",
    "forward_studies.alerted_at": "When the study went over [forward] sla_minutes "
                                  "undelivered and was alerted; NULL otherwise.",
    "forward_studies.last_error": "Last send failure reason; '' when none.",

    "forward_items": "The send / receive log of store-and-forward (R-B3): one row per "
                     "(destination, instance) routed by a rule, and the work list of the "
                     "forwarding jobs. Written by index/forward_log.py.",
    "forward_items.pk": "Surrogate key.",
    "forward_items.destination": "Destination name from the [forward] rules.",
    "forward_items.study_uid": "StudyInstanceUID.",
    "forward_items.series_uid": "SeriesInstanceUID.",
    "forward_items.sop_uid": "SOPInstanceUID.",
    "forward_items.sop_class_uid": "SOPClassUID (for the C-STORE presentation context).",
    "forward_items.calling_aet": "Calling AE title it was received from (C-STORE), or the "
                                 "Source AE Title pacsd recorded in the object when a rule "
                                 "needs it; '' otherwise (e.g. STOW-RS).",
    "forward_items.received_at": "Arrival, POSIX seconds.",
    "forward_items.state": "pending, sent or gone (deleted from the archive before it was "
                           "sent). Failed attempts leave it pending (attempts, last_error).",
    "forward_items.sent_at": "Confirmed delivery, POSIX seconds; NULL before.",
    "forward_items.attempts": "Send attempts so far.",
    "forward_items.last_error": "Last failure reason (truncated, PHI-free); '' when none.",

    # --- lifecycle (lifecycle_schema.py, migration 4) -------------------------------------
    "study_retention": "Per study, what HIS or an operator said about the visit (class, "
                       "dates) and the legal hold, for retention (R-A7: 15 / 30 years). Keyed "
                       "by StudyInstanceUID text so it may precede the images and outlive a "
                       "purge. Written by index/lifecycle.py for services/retention.py (API, "
                       "`pacsd retention visit|hold|release`).",
    "study_retention.pk": "Surrogate key.",
    "study_retention.study_instance_uid": "The study's StudyInstanceUID. Unique.",
    "study_retention.visit_class": "outpatient, inpatient or NULL (unknown); also becomes "
                                   "studies.visit_type.",
    "study_retention.visit_date": "Outpatient visit or admission date, 'YYYYMMDD'.",
    "study_retention.discharge_date": "Inpatient discharge date, 'YYYYMMDD'.",
    "study_retention.source": "Where the visit data came from: 'api' or 'cli'; '' when the "
                              "row was created by a legal hold only.",
    "study_retention.legal_hold": "Legal hold: the study is never purged while set.",
    "study_retention.hold_reason": "Reason of the hold (1-200 characters, asked to be "
                                   "PHI-free); '' when no hold.",
    "study_retention.hold_set_at": "When the hold was set, POSIX seconds; NULL when none.",
    "study_retention.updated_at": "Last change, POSIX seconds.",

    "purge_tombstones": "Two-phase deletion of expired studies (R-A7, FT-13): marking removes "
                        "the study from the catalogue and records its blobs in the same "
                        "transaction; purging deletes them from every copy; finalising closes "
                        "the tombstone. A crash resumes from these rows. Written by "
                        "index/lifecycle.py for services/retention.py (Purger).",
    "purge_tombstones.pk": "Surrogate key.",
    "purge_tombstones.study_instance_uid": "The purged study's StudyInstanceUID.",
    "purge_tombstones.state": "marked or finalized.",
    "purge_tombstones.object_count": "Number of distinct blobs recorded for deletion "
                                     "(current instances and kept versions).",
    "purge_tombstones.reason": "JSON: visit_class, class_source, retain_until, start_basis of "
                               "the retention decision; no patient data.",
    "purge_tombstones.marked_at": "Phase 1 time, POSIX seconds.",
    "purge_tombstones.finalized_at": "When every blob was deleted; NULL while marked.",

    "purge_objects": "The blobs of a tombstone to delete from every copy, ticked off one by "
                     "one (a blob still referenced by another instance is kept).",
    "purge_objects.pk": "Surrogate key.",
    "purge_objects.tombstone_fk": "The tombstone (purge_tombstones.pk).",
    "purge_objects.sha256": "SHA-256 (blob name) of the object to delete.",
    "purge_objects.deleted": "Done: deleted from every copy, or kept because a current "
                            "instance or kept version still references the blob.",

    "corrections": "One row per correction of a study's patient / study attributes (R-A8; "
                   "also each study of a patient merge). Written by index/versions.py for "
                   "services/versions.py (POST /api/v1/studies/{uid}/corrections).",
    "corrections.pk": "Surrogate key; instance_versions.correction_fk points here.",
    "corrections.study_instance_uid": "The corrected study's StudyInstanceUID.",
    "corrections.reason": "Why (1-200 characters, asked to be PHI-free).",
    "corrections.changes": "JSON: DICOM keyword -> new value (patient and study attributes "
                           "only, e.g. PatientName, PatientID).",
    "corrections.actor": "Actor id of who corrected (e.g. user:<pk>, token:<pk>); '' when "
                        "none was given.",
    "corrections.instance_count": "Instances whose bytes changed.",
    "corrections.created_at": "When, POSIX seconds.",

    "instance_versions": "Earlier versions of corrected instances (R-A8): the superseded "
                         "blob reference; the current version stays the instances row. "
                         "Written by index/versions.py; removed with the study (delete after "
                         "expiry, purge).",
    "instance_versions.pk": "Surrogate key.",
    "instance_versions.study_instance_uid": "StudyInstanceUID.",
    "instance_versions.series_instance_uid": "SeriesInstanceUID.",
    "instance_versions.sop_instance_uid": "SOPInstanceUID.",
    "instance_versions.version": "1 = as first received, 2 = after the first correction ...; "
                                 "the current instance is version count + 1.",
    "instance_versions.sha256": "SHA-256 (blob name) of that version's object.",
    "instance_versions.size": "Its size in bytes.",
    "instance_versions.transfer_syntax_uid": "Its transfer syntax.",
    "instance_versions.correction_fk": "The correction that replaced it (corrections.pk); "
                                       "NULL when imported without one.",
    "instance_versions.created_at": "When this version was stored, POSIX seconds.",
    "instance_versions.superseded_at": "When it was replaced, POSIX seconds.",

    "compressed_objects": "Objects compressed losslessly at ingest ([storage] compress, R-A5), "
                          "for the space-saved report (joined with current instances, so a "
                          "row whose index commit failed never counts). Written by "
                          "services/compression.py.",
    "compressed_objects.pk": "Surrogate key.",
    "compressed_objects.sha256": "SHA-256 of the stored (compressed) object. Unique.",
    "compressed_objects.received_size": "Size as received, bytes.",
    "compressed_objects.stored_size": "Size as stored, bytes.",
    "compressed_objects.transfer_syntax_uid": "The lossless transfer syntax it was stored in.",
    "compressed_objects.created_at": "When, POSIX seconds.",

    "scrub_schedule": "One row (pk 1): the scheduled scrub of the serve processes ([storage] "
                      "scrub_every_days, R-A6). A lease lets one process of several scrub a "
                      "slice at a time; after_pk lets the next slice continue after any "
                      "restart (FT-13). Written by services/scheduled_scrub.py.",
    "scrub_schedule.pk": "Always 1.",
    "scrub_schedule.after_pk": "instances.pk the current pass has reached (0 at the start).",
    "scrub_schedule.in_progress": "A pass is under way.",
    "scrub_schedule.lease_owner": "Process holding the lease; '' when free.",
    "scrub_schedule.lease_until": "Lease end, POSIX seconds (0 when free).",
    "scrub_schedule.last_started_at": "Start of the current or last pass, POSIX seconds.",
    "scrub_schedule.last_completed_at": "End of the last complete pass; NULL before the "
                                        "first.",
    "scrub_schedule.last_result": "JSON totals of the last complete pass (objects, counts, "
                                  "repairs, repair_failures, unrepairable, remaining, errors, "
                                  "orphans, ok); UIDs and hashes, no patient data.",
    "scrub_schedule.running": "JSON totals of the pass under way.",

    # --- OIDC (oidc_schema.py, migration 9) -----------------------------------------------
    "oidc_links": "Which pacsd user an identity provider's subject is (R-E1 OIDC login): "
                  "made or linked at the first login. Written by services/oidc.py.",
    "oidc_links.user_fk": "The pacsd user (users.pk); one link per user.",
    "oidc_links.issuer": "The provider's issuer URL (ID token 'iss').",
    "oidc_links.subject": "The provider's subject id (ID token 'sub'); unique with issuer.",
    "oidc_links.linked_at": "When linked, POSIX seconds.",

    "oidc_logins": "Pending OIDC logins: one row per started authorization and per ticket "
                   "waiting for pacsd's TOTP code; deleting the row makes a state or ticket "
                   "single-use across processes. Rows older than [security.oidc] "
                   "login_timeout_s are deleted. Written by services/oidc.py.",
    "oidc_logins.state": "SHA-256 (hex) of the OAuth state or of the TOTP ticket.",
    "oidc_logins.kind": "authorize or otp.",
    "oidc_logins.browser": "SHA-256 (hex) of the browser-binding cookie value (of '' for otp "
                           "tickets).",
    "oidc_logins.nonce": "OIDC nonce sent to the provider and checked in the ID token; '' for "
                         "otp tickets.",
    "oidc_logins.verifier": "PKCE code verifier (needed in clear for the token request); '' "
                            "for otp tickets. Lives at most login_timeout_s.",
    "oidc_logins.user_fk": "otp tickets: the user waiting for the TOTP code (users.pk, no "
                           "foreign key); NULL for authorize rows.",
    "oidc_logins.detail": "JSON, always '{}' today: no code writes or reads it.",
    "oidc_logins.created_at": "When started, POSIX seconds.",

    # --- plugin bookkeeping (plugin_tables.py, its own MetaData) --------------------------
    "plugin_schema_version": "One row per applied plugin migration, per plugin (R-E6; "
                             "index/plugin_tables.py). Created on first use, outside the core "
                             "migrations; the plugins' own tables are documented by each "
                             "plugin.",
    "plugin_schema_version.plugin": "Plugin schema name (the prefix of its tables).",
    "plugin_schema_version.version": "The plugin's migration number (1..N).",
    "plugin_schema_version.description": "The migration's description (at most 200 "
                                         "characters).",
    "plugin_schema_version.applied_at": "When applied or stamped (UTC).",
}

#: Columns holding patient data: identifiers, demographics, exam dates, free text and
#: physician names from DICOM (PS3.15 Basic Profile would remove or replace them), and
#: the stored DICOM JSON / metadata. UIDs, hashes, AE titles and counts are not listed:
#: they are pseudonymous keys that link to patient data without holding it.
PHI: frozenset[str] = frozenset({
    *(f"patients.{c}" for c in ("patient_id", "patient_name", "patient_name_alpha",
                                "patient_name_ideo", "patient_name_phon", "patient_name_words",
                                "patient_birth_date", "patient_sex")),
    *(f"studies.{c}" for c in (
        "study_date", "study_time", "accession_number", "study_id", "study_description",
        "referring_physician_name", "referring_physician_name_alpha",
        "referring_physician_name_ideo", "referring_physician_name_phon",
        "referring_physician_name_words", "patient_name", "patient_name_alpha",
        "patient_name_ideo", "patient_name_phon", "patient_name_words", "patient_birth_date",
        "patient_sex", "study_json", "visit_number", "card_number")),
    *(f"series.{c}" for c in ("series_description", "series_date", "series_time",
                              "performed_procedure_step_start_date",
                              "performed_procedure_step_start_time", "series_json")),
    *(f"instances.{c}" for c in ("content_date", "content_time", "instance_json",
                                 "metadata")),
    "study_retention.visit_date", "study_retention.discharge_date",
    "corrections.changes",
})

#: Secrets stored only as one-way hashes (the secret itself is never stored).
HASHED: frozenset[str] = frozenset({
    "users.password_hash", "users.password_history", "api_tokens.token_sha256",
    "sessions.token_sha256", "oidc_logins.state", "oidc_logins.browser",
})

#: Secrets stored readable, because the protocol needs them in clear (protect backups).
CLEARTEXT_SECRETS: frozenset[str] = frozenset({
    "users.totp_secret", "oidc_logins.verifier",
})

#: Columns added to an existing table after it was created: "table.column" -> migration.
#: (Tables' own migrations: :func:`table_migrations`.)
LATER_COLUMNS: dict[str, int] = {
    "instances.digest": 10,
    "studies.study_cuts": 11, "series.series_cuts": 11, "instances.instance_cuts": 11,
}

_DIALECTS = (("SQLite", _sqlite.dialect()), ("PostgreSQL", _pg.dialect()))


def load_metadata() -> sa.MetaData:
    """The core metadata with every table registered (imports every pacsd.index module)."""
    import pacsd.index as package
    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "dictionary":
            importlib.import_module(f"{package.__name__}.{info.name}")
    from pacsd.index.schema import metadata
    return metadata


def documented_tables() -> list[sa.Table]:
    """Every core table in document order (creation order of migrations.py, then any
    other table of the metadata), then the plugin bookkeeping table."""
    metadata = load_metadata()
    from pacsd.index import migrations, plugin_tables, schema
    order = list(schema.CATALOGUE_TABLES) + [schema.schema_version]
    order += [t for t in migrations.FRESH_TABLES if t not in order]
    order += [t for t in metadata.sorted_tables if t not in order]
    return order + [plugin_tables.plugin_schema_version]


def table_migrations() -> dict[str, int]:
    """Table name -> the migration that creates it on an existing database."""
    load_metadata()
    from pacsd.index import (access_schema, audit_schema, forward_schema, jobs_schema,
                             lifecycle_schema, oidc_schema, schema, security_schema)
    groups = ((1, schema.CATALOGUE_TABLES + (schema.schema_version,)),
              (2, security_schema.SECURITY_TABLES),
              (3, jobs_schema.JOBS_TABLES + forward_schema.FORWARD_TABLES),
              (4, lifecycle_schema.LIFECYCLE_TABLES), (5, access_schema.ACCESS_TABLES),
              (7, audit_schema.AUDIT_TABLES), (9, oidc_schema.OIDC_TABLES))
    return {t.name: n for n, tables in groups for t in tables}


def column_migrations() -> dict[str, int]:
    """"table.column" -> migration, for columns added after their table (migrations 5, 6
    from the modules' own lists; 10, 11 from :data:`LATER_COLUMNS`)."""
    from pacsd.index import access_schema, worklist
    added = {f"{t}.{c}": 5 for t, c, _typ, _extra in access_schema.ADDED_COLUMNS}
    added.update({f"studies.{c}": 6 for c in worklist.ADDED})
    added.update(LATER_COLUMNS)
    return added


def all_keys() -> set[str]:
    """Every table name and "table.column" the document must describe."""
    keys: set[str] = set()
    for t in documented_tables():
        keys.add(t.name)
        keys.update(f"{t.name}.{c.name}" for c in t.columns)
    return keys


# --- rendering ---------------------------------------------------------------------------

def _text(text: str) -> str:
    """Markdown prose: a backslash and '<' (as in 'user:<pk>') shown as written."""
    return str(text).replace("\\", "\\\\").replace("<", "&lt;")


def _cell(text: str) -> str:
    return _text(text).replace("|", "\\|").replace("\n", " ")


def _first_sentence(key: str) -> str:
    text = DESCRIPTIONS.get(key, "")
    return text.split(". ")[0].rstrip(".") + "."


def _type(col: sa.Column) -> str:
    lite, pg = (str(col.type.compile(dialect=d)) for _, d in _DIALECTS)
    return lite if lite == pg else f"{lite} / {pg}"


def _default(col: sa.Column) -> str:
    d = col.server_default
    if d is None:
        return ""
    arg = d.arg
    if isinstance(arg, str):
        return repr(arg) if not arg.lstrip("-").isdigit() else arg
    lite, pg = (str(arg.compile(dialect=dia)) for _, dia in _DIALECTS)
    return lite if lite == pg else f"{lite} / {pg}"


def _ddl(index: sa.Index) -> tuple[str, str]:
    """(where it exists, its DDL) of an index: one dialect for ddl_if indexes."""
    only = getattr(getattr(index, "_ddl_if", None), "dialect", None)
    texts = {}
    for name, dialect in _DIALECTS:
        if only and dialect.name != only:
            continue
        texts[name] = str(sa.schema.CreateIndex(index).compile(dialect=dialect))
    where = " and ".join(texts) if len(texts) == 1 else "both"
    ddl = sorted(set(texts.values()))
    return where, " / ".join(ddl)


def _keys(table: sa.Table, col: sa.Column) -> str:
    parts = []
    if col.primary_key:
        parts.append("PK")
    for fk in sorted(col.foreign_keys, key=lambda f: f.target_fullname):
        parts.append(f"FK {fk.target_fullname}")
    for con in sorted((c for c in table.constraints if isinstance(c, sa.UniqueConstraint)),
                      key=lambda c: str(c.name)):
        if col.name in con.columns:
            parts.append(f"unique ({con.name})" if len(con.columns) > 1 else "unique")
    return ", ".join(parts)


def _flag(key: str) -> str:
    if key in PHI:
        return "PHI"
    if key in HASHED:
        return "hashed secret"
    if key in CLEARTEXT_SECRETS:
        return "secret (clear)"
    return ""


def render() -> str:
    from pacsd.index import migrations
    tables = documented_tables()
    t_mig, c_mig = table_migrations(), column_migrations()
    n_cols = sum(len(t.columns) for t in tables)
    out = [
        "# Data dictionary",
        "",
        "<!-- Generated by `python -m pacsd.index.dictionary` from pacsd/index/dictionary.py "
        "and the SQLAlchemy schema; do not edit by hand. -->",
        "",
        "Every table and column of pacsd's catalogue database (SQLite or PostgreSQL; "
        "`[index] url`), R-E8. Generated by `python -m pacsd.index.dictionary` from the "
        "schema modules (`pacsd/index/*_schema.py`, `schema.py`) and the descriptions in "
        "`pacsd/index/dictionary.py`; `python -m pacsd.index.dictionary --check` (and "
        "`tests/docs/test_data_dictionary.py`) fails when this file is stale or a column "
        "has no description. To change the schema, see `pacsd/index/migrations.py`.",
        "",
        f"{len(tables)} tables, {n_cols} columns. Plugin tables (`pacsd/index/"
        "plugin_tables.py`, R-E6: named `<plugin>_...`, versioned per plugin in "
        "`plugin_schema_version`) are documented by each plugin.",
        "",
        "Conventions: times named `*_at` are POSIX seconds (float) in the security, jobs, "
        "forwarding and lifecycle tables, timestamps with time zone (UTC) in the catalogue "
        "tables, and ISO 8601 UTC text in the audit tables (part of the hashed record). "
        "Text columns are `TEXT COLLATE \"C\"` on PostgreSQL (byte order, case-sensitive "
        "matching). \"Since\" is the migration that added the column or table.",
        "",
        "Sensitivity column: **PHI** = patient data (identifiers, demographics, exam dates, "
        "free text and physician names from DICOM, the stored DICOM JSON); **hashed "
        "secret** = a secret kept only as a one-way hash (argon2id, SHA-256); **secret "
        "(clear)** = a secret stored readable because the protocol needs it. UIDs, SHA-256 "
        "object names, AE titles and counts are pseudonymous: they are not marked, but they "
        "link to patient data. The audit, jobs and forwarding tables hold no patient data by "
        "design.",
        "",
        "## Migrations",
        "",
        "| Version | Description |",
        "|---|---|",
    ]
    out += [f"| {m.version} | {_cell(m.description)} |"
            for m in sorted(migrations.MIGRATIONS, key=lambda m: m.version)]
    out += ["", "## Tables", ""]
    out += [f"- [`{t.name}`](#{t.name}) — {_cell(_first_sentence(t.name))}" for t in tables]
    for t in tables:
        since = t_mig.get(t.name)
        out += ["", f"## {t.name}", "", _text(DESCRIPTIONS.get(t.name, "**(undocumented)**")),
                ""]
        out.append(f"Created by migration {since}." if since else
                   "Created on first use by `pacsd/index/plugin_tables.py` (not a core "
                   "migration).")
        out += ["", "| Column | Type (SQLite / PostgreSQL) | Null | Default | Key | Indexes "
                "| Since | Sensitivity | Description |", "|---|---|---|---|---|---|---|---|---|"]
        indexes = sorted(t.indexes, key=lambda i: str(i.name))
        for col in t.columns:
            key = f"{t.name}.{col.name}"
            in_ix = [str(i.name) for i in indexes if col.name in i.columns]
            col_since = c_mig.get(key, since)
            out.append("| " + " | ".join(_cell(x) for x in (
                f"`{col.name}`", _type(col), "yes" if col.nullable else "no", _default(col),
                _keys(t, col), ", ".join(in_ix), col_since or "", _flag(key),
                DESCRIPTIONS.get(key, "**(undocumented)**"))) + " |")
        uniques = sorted((c for c in t.constraints if isinstance(c, sa.UniqueConstraint)),
                         key=lambda c: str(c.name))
        pk = t.primary_key
        out += ["", "Keys and indexes:", ""]
        out.append(f"- primary key `{pk.name or 'pk'}` ({', '.join(c.name for c in pk.columns)})")
        for con in uniques:
            out.append(f"- unique constraint `{con.name}` "
                       f"({', '.join(c.name for c in con.columns)})")
        for fkc in sorted((c for c in t.constraints if isinstance(c, sa.ForeignKeyConstraint)),
                          key=lambda c: str(c.name)):
            out.append(f"- foreign key `{fkc.name}` ({', '.join(fkc.column_keys)}) -> "
                       f"{', '.join(e.target_fullname for e in fkc.elements)}")
        for ix in indexes:
            where, ddl = _ddl(ix)
            on = "" if where == "both" else f" ({where} only)"
            out.append(f"- index `{ix.name}`{on}: `{ddl}`")
    return "\n".join(out) + "\n"


def check(root: Path) -> list[str]:
    """What differs between the committed document and the generator's output."""
    path = root / DOC_PATH
    want = render()
    if not path.exists():
        return [f"{DOC_PATH} is missing"]
    have = path.read_text(encoding="utf-8")
    if have == want:
        return []
    diff = difflib.unified_diff(have.splitlines(), want.splitlines(), "committed",
                                "generated", lineterm="", n=0)
    return [f"{DOC_PATH} is stale (run `python -m pacsd.index.dictionary`):",
            *list(diff)[:60]]


def missing() -> tuple[list[str], list[str]]:
    """(tables / columns without a description, described keys that do not exist)."""
    keys = all_keys()
    flagged = set(PHI) | set(HASHED) | set(CLEARTEXT_SECRETS) | set(LATER_COLUMNS)
    return (sorted(keys - set(DESCRIPTIONS)),
            sorted((set(DESCRIPTIONS) | flagged) - keys))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pacsd.index.dictionary",
                                 description="Write (or --check) docs/data-dictionary.md.")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 and name what differs when the file is stale")
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2],
                    help="repository root (default: this source tree)")
    args = ap.parse_args(argv)
    undocumented, unknown = missing()
    problems = [f"no description: {k}" for k in undocumented]
    problems += [f"described but not in the schema: {k}" for k in unknown]
    if args.check:
        problems += check(args.root)
        for line in problems:
            print(line, file=sys.stderr)
        return 1 if problems else 0
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        return 1
    (args.root / DOC_PATH).write_text(render(), encoding="utf-8")
    print(f"wrote {args.root / DOC_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
