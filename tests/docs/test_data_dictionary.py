"""docs/data-dictionary.md keeps up with the catalogue schema (R-E8).

Every table and column of the metadata has a description in pacsd/index/dictionary.py, no
description names a column that does not exist, and the committed document is exactly
what ``python -m pacsd.index.dictionary`` writes. Adding a column without documenting it
(or without regenerating the document) fails here.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from pacsd.index import dictionary

ROOT = Path(__file__).resolve().parents[2]


def test_every_table_and_column_is_described():
    metadata = dictionary.load_metadata()
    keys = dictionary.all_keys()
    for table in metadata.tables.values():  # every table registered on the core metadata
        assert table.name in keys
        for col in table.columns:
            assert f"{table.name}.{col.name}" in keys
            assert dictionary.DESCRIPTIONS.get(f"{table.name}.{col.name}", "").strip(), \
                f"no description of {table.name}.{col.name} in pacsd/index/dictionary.py"
        assert dictionary.DESCRIPTIONS.get(table.name, "").strip(), \
            f"no description of table {table.name}"
    undocumented, unknown = dictionary.missing()
    assert undocumented == []
    assert unknown == [], "descriptions or flags of columns that do not exist"


def test_the_core_tables_are_all_there():
    names = {t.name for t in dictionary.documented_tables()}
    assert len(dictionary.load_metadata().tables) == 27
    assert {"patients", "studies", "series", "instances", "users", "api_tokens", "sessions",
            "audit_events", "jobs", "forward_items", "instance_versions", "oidc_logins",
            "plugin_schema_version"} <= names


def test_an_undocumented_column_or_a_stale_name_is_reported(monkeypatch):
    extra = sa.Table("patients", sa.MetaData(), sa.Column("pk", sa.Integer, primary_key=True),
                     sa.Column("shoe_size", sa.Integer))
    real = dictionary.documented_tables
    monkeypatch.setattr(dictionary, "documented_tables", lambda: real() + [extra])
    undocumented, unknown = dictionary.missing()
    assert undocumented == ["patients.shoe_size"]
    assert unknown == []
    monkeypatch.setattr(dictionary, "documented_tables", real)
    monkeypatch.setitem(dictionary.DESCRIPTIONS, "studies.no_such_column", "gone")
    assert dictionary.missing() == ([], ["studies.no_such_column"])


def test_sensitivity_flags():
    assert dictionary.PHI.isdisjoint(dictionary.HASHED)
    assert dictionary.PHI.isdisjoint(dictionary.CLEARTEXT_SECRETS)
    assert dictionary.HASHED.isdisjoint(dictionary.CLEARTEXT_SECRETS)
    for key in ("patients.patient_name", "patients.patient_id", "studies.patient_name",
                "studies.study_json", "instances.metadata", "corrections.changes"):
        assert key in dictionary.PHI
    for key in ("users.password_hash", "api_tokens.token_sha256", "sessions.token_sha256"):
        assert key in dictionary.HASHED
    assert "users.totp_secret" in dictionary.CLEARTEXT_SECRETS
    # The audit trail, job queue and forwarding log hold no patient data by design.
    for key in dictionary.PHI:
        assert not key.startswith(("audit_", "jobs.", "forward_"))


def test_committed_document_is_current():
    committed = (ROOT / dictionary.DOC_PATH).read_text(encoding="utf-8")
    assert committed == dictionary.render(), (
        "docs/data-dictionary.md is stale: run `python -m pacsd.index.dictionary`")
    assert dictionary.check(ROOT) == []
    n_cols = sum(len(t.columns) for t in dictionary.documented_tables())
    assert f"{len(dictionary.documented_tables())} tables, {n_cols} columns" in committed
    for m in __import__("pacsd.index.migrations", fromlist=["MIGRATIONS"]).MIGRATIONS:
        assert f"| {m.version} |" in committed
    assert "**(undocumented)**" not in committed


def test_check_names_what_differs(tmp_path):
    (tmp_path / "docs").mkdir()
    doc = tmp_path / dictionary.DOC_PATH
    shutil.copy(ROOT / dictionary.DOC_PATH, doc)
    assert dictionary.main(["--check", "--root", str(tmp_path)]) == 0
    doc.write_text(doc.read_text().replace("Surrogate key.", "Surrogate key!", 1))
    problems = dictionary.check(tmp_path)
    assert problems and "stale" in problems[0]
    assert any("Surrogate key!" in line for line in problems)
    assert dictionary.main(["--check", "--root", str(tmp_path)]) == 1
    doc.unlink()
    assert dictionary.check(tmp_path) == [f"{dictionary.DOC_PATH} is missing"]
    # The generator writes the current document.
    assert dictionary.main(["--root", str(tmp_path)]) == 0
    assert doc.read_text() == dictionary.render()


def test_module_entry_point_check():
    proc = subprocess.run([sys.executable, "-m", "pacsd.index.dictionary", "--check",
                           "--root", str(ROOT)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
