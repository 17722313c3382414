"""Forwarding rules and destination settings (R-B2, R-B3): DICOM keywords of any level,
wildcards, value lists, the calling AE of a C-STORE, and refusals of bad settings with a
message that names the problem."""
from __future__ import annotations

import pytest
from dicomgen import make_dataset, to_part10

from pacsd.config import ConfigError, Settings, load_settings
from pacsd.dicom import parse_instance
from pacsd.services.forward import compile_rules, source_aet_from_header


def parsed(tmp_path, **attrs):
    path = tmp_path / "x.dcm"
    path.write_bytes(to_part10(make_dataset(**attrs)))
    return parse_instance(str(path))


def route(settings: Settings, p, aet: str = "") -> list[str]:
    out: dict[str, None] = {}
    from pacsd.services.forward import _values  # the matcher the service uses
    import orjson
    meta = orjson.loads(p.metadata)
    for rule in compile_rules(settings):
        if rule.matches(lambda key, tag: [aet] if tag is None else _values(meta, tag)):
            out.update(dict.fromkeys(rule.destinations))
    return list(out)


def settings_with(rules, destinations=("city", "backup")) -> Settings:
    s = Settings()
    s.forward.destinations = {d: {"type": "dicomweb", "url": f"https://{d}.example/studies"}
                              for d in destinations}
    s.forward.rules = rules
    return s


def test_rules_match_keywords_wildcards_lists_and_calling_aet(tmp_path):
    s = settings_with([
        {"name": "city", "destinations": ["city"],
         "match": {"Modality": ["CT", "MR"], "InstitutionName": "Central*",
                   "SOPClassUID": "1.2.840.10008.5.1.4.1.1.?"}},
        {"name": "from CT01", "destinations": ["backup"], "match": {"calling_aet": "CT0?"}},
        {"name": "names", "destinations": ["backup"], "match": {"PatientName": "Wang^*"}},
    ])
    ct = parsed(tmp_path, InstitutionName="Central Hospital")
    assert route(s, ct) == ["city"]
    assert route(s, ct, aet="CT01") == ["city", "backup"]
    assert route(s, ct, aet="CT10") == ["city"]
    assert route(s, parsed(tmp_path, InstitutionName="Other")) == []
    assert route(s, parsed(tmp_path, Modality="US", InstitutionName="Central")) == []
    assert route(s, parsed(tmp_path, InstitutionName=None)) == []  # missing: no match
    assert route(s, parsed(tmp_path, Modality="OT", PatientName="Wang^Wu")) == ["backup"]
    # [ is literal, not a character class
    s2 = settings_with([{"destinations": ["city"], "match": {"StudyID": "[1]"}}])
    assert route(s2, parsed(tmp_path, StudyID="[1]")) == ["city"]
    assert route(s2, parsed(tmp_path, StudyID="1")) == []


def test_an_empty_match_takes_everything(tmp_path):
    s = settings_with([{"destinations": ["city", "backup", "city"]}])
    assert route(s, parsed(tmp_path, Modality="ECG")) == ["city", "backup"]


def test_calling_aet_is_read_from_the_file_meta_header():
    ds = make_dataset()
    data = to_part10(ds)
    assert source_aet_from_header(data[:4096]) == ""
    from pydicom.dataset import FileMetaDataset
    import io
    from pydicom.filewriter import dcmwrite
    ds.file_meta = FileMetaDataset(ds.file_meta)
    ds.file_meta.SourceApplicationEntityTitle = "CT01"
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    assert source_aet_from_header(out.getvalue()[:4096]) == "CT01"
    assert source_aet_from_header(b"not dicom") == ""


@pytest.mark.parametrize("toml, message", [
    ('[forward.destinations.x]\ntype = "ftp"\n', "dicomweb"),
    ('[forward.destinations.x]\ntype = "dicomweb"\n', "url"),
    ('[forward.destinations.x]\ntype = "dimse"\nae_title = "A"\nhost = "h"\n',
     "ae_title, host and port"),
    ('[forward.destinations.x]\ntype = "dimse"\nae_title = "A"\nhost = "h"\nport = 1\n'
     'colour = 1\n', "colour"),
    ('[[forward.rules]]\ndestinations = ["nowhere"]\n', "unknown destination"),
    ('[[forward.rules]]\ndestinations = []\n', "destinations"),
    ('[forward.destinations.x]\ntype = "dicomweb"\nurl = "http://h/s"\n'
     '[[forward.rules]]\ndestinations = ["x"]\nmatch = { Modality = 3 }\n', "strings"),
    ('[forward]\nsla_minutes = 0\n', "sla_minutes"),
])
def test_bad_forward_settings_are_refused(tmp_path, toml, message):
    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_settings(f)


def test_unknown_keyword_refused_at_start(tmp_path):
    s = settings_with([{"destinations": ["city"], "match": {"Modalityy": "CT"}}])
    with pytest.raises(ConfigError, match="Modalityy"):
        compile_rules(s)


def test_token_secret_indirection_and_where_hides_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("PACSD_TEST_FWD_TOKEN", "tok-123")
    f = tmp_path / "c.toml"
    f.write_text('[forward.destinations.city]\ntype = "dicomweb"\n'
                 'url = "https://user:pw@city.example:8443/dicom-web/studies"\n'
                 'token = "$env:PACSD_TEST_FWD_TOKEN"\n')
    dest = load_settings(f).forward.parsed_destinations()["city"]
    assert dest.token == "tok-123"
    assert dest.where() == "https://city.example:8443/dicom-web/studies"
