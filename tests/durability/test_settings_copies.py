"""``[storage] copies`` and ``--store`` (R-A6): parsing, secret indirection, inheritance
of the S3 options, errors that stop start-up (exit status 2), and the progress bar of
``pacsd verify``."""
from __future__ import annotations

import io

import pytest

from pacsd.cli import _parser
from pacsd.progress import ProgressBar
from pacsd.config import ConfigError, Settings, load_settings


def test_copies_from_toml_with_inherited_s3_options(tmp_path, monkeypatch):
    monkeypatch.setenv("PACSD_TEST_COPY_SECRET", "s3cr3t")
    f = tmp_path / "c.toml"
    f.write_text("""
[storage]
url = "/ignored/when/copies/are/given"
endpoint_url = "http://s3.example:9000"
key = "k"
secret = "$env:PACSD_TEST_COPY_SECRET"

[[storage.copies]]
url = "/srv/a"
[[storage.copies]]
url = "s3://bucket/one"
[[storage.copies]]
url = "s3://bucket/two"
endpoint_url = "http://other:9000"
secret = "$env:PACSD_TEST_COPY_SECRET"
""")
    specs = load_settings(f).storage.copy_specs("/default")
    assert specs == [
        {"url": "/srv/a"},  # local copies never get S3 options
        {"url": "s3://bucket/one", "endpoint_url": "http://s3.example:9000", "key": "k",
         "secret": "s3cr3t"},
        {"url": "s3://bucket/two", "endpoint_url": "http://other:9000", "key": "k",
         "secret": "s3cr3t"},
    ]


def test_no_copies_means_one_copy_at_url():
    s = Settings()
    assert s.storage.copy_specs("/data/blobs") == [{"url": "/data/blobs"}]
    s.storage.url = "s3://b/p"
    s.storage.region = "eu-west-1"
    assert s.storage.copy_specs("/x") == [{"url": "s3://b/p", "region": "eu-west-1"}]


@pytest.mark.parametrize("copies, message", [
    (["/just/a/string"], "must be a table"),
    ([{"url": "/a", "bucket": "b"}], "unknown setting"),
    ([{"endpoint_url": "http://x"}], "needs a url"),
    ([{"url": 5}], "must be strings"),
])
def test_bad_copies_are_config_errors(copies, message):
    s = Settings()
    s.storage.copies = copies
    with pytest.raises(ConfigError, match=message):
        s.storage.copy_specs("/x")


def test_store_flag_repeatable_on_serve_and_verify():
    args = _parser().parse_args(["serve", "--store", "/a", "--store", "s3://b/c"])
    assert args.store == ["/a", "s3://b/c"]
    args = _parser().parse_args(["verify", "--repair", "--store", "/a"])
    assert args.store == ["/a"] and args.repair and not args.resume


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_on_a_terminal_only():
    out = _Tty()
    bar = ProgressBar("verify", out)
    bar("objects", 5, 10)
    bar("objects", 10, 10, note="2 repaired")
    bar.close()
    text = out.getvalue()
    assert "verify objects: [###############" in text and "10/10 (100%) 2 repaired" in text
    assert text.endswith("\n") and text.count("\n") == 1
    quiet = io.StringIO()
    ProgressBar("verify", quiet)("objects", 1, 2)
    assert quiet.getvalue() == ""
