"""conf/pacsd.example.toml and docs/settings.md keep up with pacsd/config.py (R-E8)."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from pacsd.config import ConfigError, load_settings, settings_as_toml_defaults

ROOT = Path(__file__).resolve().parents[2]


def test_example_file_lists_every_setting_at_its_default():
    example = tomllib.loads((ROOT / "conf/pacsd.example.toml").read_text())
    example.pop("plugins", None)
    assert example == settings_as_toml_defaults()


def test_settings_doc_describes_every_setting():
    doc = (ROOT / "docs/settings.md").read_text()
    for section, values in settings_as_toml_defaults().items():
        assert f"[{section}]" in doc
        for key in values:
            assert f"`{key}`" in doc, f"docs/settings.md lacks [{section}] {key}"


def test_example_file_loads_and_unknown_keys_refused(tmp_path):
    s = load_settings(ROOT / "conf/pacsd.example.toml")
    assert s.server.http == "127.0.0.1:8042"
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nhttpp = "x"\n')
    with pytest.raises(ConfigError):
        load_settings(bad)
    bad.write_text('[server]\ndicom_port = "eleven"\n')
    with pytest.raises(ConfigError):
        load_settings(bad)


def test_secret_indirection(tmp_path, monkeypatch):
    monkeypatch.setenv("PACSD_TEST_SECRET", "s3cr3t")
    f = tmp_path / "c.toml"
    f.write_text('[storage]\nsecret = "$env:PACSD_TEST_SECRET"\nkey = "$file:%s"\n'
                 % (tmp_path / "k"))
    (tmp_path / "k").write_text("keyvalue\n")
    s = load_settings(f)
    assert s.storage.secret == "s3cr3t" and s.storage.key == "keyvalue"


def test_cli_overrides_and_loopback_rule(tmp_path):
    from pacsd.server import check_startup_security
    s = load_settings(None, server__http="0.0.0.0:8042", server__data_dir=str(tmp_path))
    with pytest.raises(ConfigError):
        check_startup_security(s)  # SEC-20: no non-loopback listener without auth
    check_startup_security(load_settings(None, server__http="[::1]:8042"))
