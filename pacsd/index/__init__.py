"""L3: the catalogue (index) and QIDO-RS matching.

* :class:`Catalogue` (``catalogue.py``): store/delete/read instances, counters, QIDO search.
* :func:`parse_qido` (``qido.py``): validate QIDO-RS parameters into a :class:`QidoQuery`.
* ``schema.py`` / ``migrations.py``: SQLAlchemy Core tables and the migration runner.
* ``names.py``: person-name normalisation rule; ``qido_sql.py``: query -> SQL -> DICOM JSON.
* ``accounts.py`` / ``audit_log.py`` (tables in ``security_schema.py``): users, API tokens,
  sessions and the hash-chained audit trail, stored in the same database.

Imports only pacsd.errors, pacsd.model, pydicom.datadict, sqlalchemy and orjson.
"""
from pacsd.index.accounts import Accounts, SessionRecord, TokenRecord, UserRecord
from pacsd.index.audit_log import AuditLog, VerifyResult
from pacsd.index.catalogue import Catalogue
from pacsd.index.qido import QidoQuery, QidoResult, parse_qido

__all__ = ["Accounts", "AuditLog", "Catalogue", "QidoQuery", "QidoResult", "SessionRecord",
           "TokenRecord", "UserRecord", "VerifyResult", "parse_qido"]
