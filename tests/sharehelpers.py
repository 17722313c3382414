"""A real ``pacsd serve`` with the first-party plugins installed and security enabled,
a radiologist and an auditor, and three studies of two invented patients."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import requests
from dicomgen import make_dataset, multipart, to_part10

from pacsd.services import totp

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "Correct-Horse-9"


@dataclass
class Site:
    url: str
    data: Path
    staff: requests.Session
    auditor: requests.Session
    studies: dict = field(default_factory=dict)   # name -> (study, series, sop)


def pacsd(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pacsd.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def login(url: str, user: str, totp_secret: str | None = None) -> requests.Session:
    s = requests.Session()
    body = {"username": user, "password": PASSWORD}
    if totp_secret is not None:  # auditors log in with a second factor (MLPS 4)
        body["otp"] = totp.code_at(totp_secret, time.time())
    r = s.post(url + "/api/v1/auth/login", json=body)
    r.raise_for_status()
    s.headers["Authorization"] = "Bearer " + r.json()["token"]
    return s


def phantom(size: int = 128, seed: int = 0) -> bytes:
    """A CT-like disc phantom (stored values = HU + 1024): air, body, two organs and a
    bright bone, shifted a little per ``seed`` so slices differ. Invented data."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    img = np.zeros((size, size)) - 1000.0
    img[x**2 / 0.8 + y**2 / 0.6 < 1] = 40            # soft tissue
    shift = 0.05 * seed
    img[(x + 0.35) ** 2 + (y - shift) ** 2 < 0.06] = -800   # lungs
    img[(x - 0.35) ** 2 + (y - shift) ** 2 < 0.06] = -800
    img[x**2 + (y - 0.45) ** 2 < 0.015] = 900            # spine (posterior)
    return (img + 1024).clip(0, 4095).astype("<u2").tobytes()


def populate(site: Site) -> None:
    """Study A (CT, 3 images) and B (MR) of patient P1, C of patient P2."""
    specs = {
        "A": dict(PatientID="P1", PatientBirthDate="19800131", StudyDescription="Chest CT",
                  Modality="CT", PatientName="Zhang^San", InstitutionName="City Hospital",
                  StudyDate="20260301", n=3),
        "B": dict(PatientID="P1", PatientBirthDate="19800131", StudyDescription="Knee MR",
                  Modality="MR", PatientName="Zhang^San", StudyDate="20250101", n=1),
        "C": dict(PatientID="P2", PatientBirthDate="19700505", StudyDescription="Other CT",
                  Modality="CT", PatientName="Li^Si", StudyDate="20260302", n=1),
    }
    for name, spec in specs.items():
        n = spec.pop("n")
        first = make_dataset(rows=128, columns=128, seed=1, **spec)
        parts = [first]
        for i in range(1, n):
            ds = make_dataset(study=first.StudyInstanceUID, series=first.SeriesInstanceUID,
                              rows=128, columns=128, seed=i + 1, **spec)
            ds.InstanceNumber = i + 1
            parts.append(ds)
        for i, ds in enumerate(parts):
            ds.PixelData = phantom(128, i)
            ds.WindowCenter, ds.WindowWidth = 40, 400
            ds.PixelSpacing = [2.5, 2.5]
        body, ctype = multipart([to_part10(d) for d in parts])
        r = site.staff.post(site.url + "/dicom-web/studies", data=body,
                            headers={"Content-Type": ctype})
        assert r.status_code == 200, r.text
        site.studies[name] = (first.StudyInstanceUID, first.SeriesInstanceUID,
                              first.SOPInstanceUID)


def setup_site(tmp_path: Path, plugin_site: Path):
    """Returns (Server, Site); the caller stops the server."""
    from pacsd_server import Server

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), str(ROOT)])}
    data = tmp_path / "data"
    data.mkdir()
    conf = tmp_path / "pacsd.toml"
    conf.write_text("[security]\nenabled = true\n\n[plugins.share]\nmax_attempts = 3\n")
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    for user, role in (("rad", "radiologist"), ("aud", "auditor")):
        made = pacsd(env, "user", "add", user, "--role", role, "--password-file", str(pw),
                     "--data-dir", str(data), "--config", str(conf))
        assert made.returncode == 0, made.stderr
    enrolled = pacsd(env, "user", "totp", "aud", "--no-qr", "--data-dir", str(data),
                     "--config", str(conf))
    assert enrolled.returncode == 0, enrolled.stderr
    secret = parse_qs(urlsplit(enrolled.stdout.splitlines()[0]).query)["secret"][0]
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = env["PYTHONPATH"]
    try:
        srv = Server(str(data), "--config", str(conf))
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = old
    try:
        site = Site(url=srv.url, data=data, staff=login(srv.url, "rad"),
                    auditor=login(srv.url, "aud", secret))
        populate(site)
    except BaseException:
        srv.stop()  # never leave a server behind when the set-up fails
        raise
    return srv, site


def create_link(site: Site, studies: list[str], **extra) -> dict:
    r = site.staff.post(site.url + "/api/v1/plugins/share/links",
                        json={"studies": studies, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def open_link(site: Site, url: str, answer: str | None = "19800131") -> requests.Session:
    """A phone: opens the link, answers the second factor; returns its session."""
    phone = requests.Session()
    r = phone.get(url, allow_redirects=False)
    assert r.status_code == 303, r.text
    if answer is not None:
        r = phone.post(site.url + "/plugins/share/verify", data={"answer": answer},
                       headers={"Origin": site.url}, allow_redirects=False)
        assert r.status_code == 303 and r.headers["Location"] == "/plugins/share/exams"
    return phone


def without_link_tokens(text: str) -> str:
    """``text`` with each share link's random token cut out, for PHI checks (SEC-11): a
    random token may contain "P5" or "P1" by chance, and that is not patient data."""
    return re.sub(r"(/plugins/share/s/)[A-Za-z0-9_-]+", r"\1", text)
