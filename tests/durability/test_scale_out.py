"""Scale-out (issue 4, R-H1; ARCHITECTURE "scale-out"): three ``pacsd serve`` processes
share one PostgreSQL index and one S3 store, as behind a load balancer.

They start together (the schema is migrated once, under the advisory lock); one study
is stored through all three at once, with the same instances sent to two processes at the
same moment (LD-6 across processes: counters exact, one row per instance, idempotent
re-sends); every process answers QIDO and WADO-RS for everything, byte for byte; one
process is killed and the others go on; a DELETE through one is seen by all.
"""
from __future__ import annotations

import concurrent.futures as cf
import signal
import uuid

import pytest
import requests
from dicomgen import make_dataset, multipart, to_part10
from pacsd_server import Server

pytestmark = pytest.mark.postgres
SINGLE = {"Accept": "application/dicom; transfer-syntax=*"}


def _stow(url: str, data: bytes) -> int:
    body, ctype = multipart([data])
    return requests.post(url + "/dicom-web/studies", data=body,
                         headers={"Content-Type": ctype}, timeout=120).status_code


def test_three_processes_share_postgres_and_s3(tmp_path, pg_fresh_url, s3_endpoint):
    opts = s3_endpoint.store_options()
    config = tmp_path / "pacsd.toml"
    config.write_text(f"""
[index]
url = "{pg_fresh_url}"

[storage]
url = "s3://pacsd-e2e/scale-{uuid.uuid4().hex[:8]}"
endpoint_url = "{opts['endpoint_url']}"
key = "{opts['key']}"
secret = "{opts['secret']}"
region = "{opts['region']}"

[retention]
enabled = false   # this test deletes a new study to see every node agree (R-A7 aside)
""")
    dirs = [tmp_path / f"node-{k}" for k in range(3)]
    for d in dirs:
        d.mkdir()
    with cf.ThreadPoolExecutor(3) as pool:  # start together: one migration
        nodes = list(pool.map(lambda d: Server(str(d), "--config", str(config)), dirs))
    try:
        study = f"2.25.{uuid.uuid4().int}"
        items = []
        for i in range(30):
            series = f"{study}.{i % 2 + 1}"
            sop = f"{series}.{i + 1}"
            items.append((series, sop, to_part10(make_dataset(
                study=study, series=series, sop=sop, seed=i, SeriesNumber=i % 2 + 1,
                InstanceNumber=i + 1, Modality=("CT", "MR")[i % 2]))))
        # Each instance to one node, and every third one to a second node at the same time.
        jobs = [(nodes[i % 3].url, data) for i, (_, _, data) in enumerate(items)]
        jobs += [(nodes[(i + 1) % 3].url, data)
                 for i, (_, _, data) in enumerate(items) if i % 3 == 0]
        with cf.ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(lambda job: _stow(*job), jobs))
        assert statuses == [200] * len(jobs)

        for node in nodes:
            r = requests.get(f"{node.url}/dicom-web/studies",
                             params={"StudyInstanceUID": study}, timeout=60)
            assert r.status_code == 200
            [item] = r.json()
            assert item["00201208"]["Value"] == [30]       # NumberOfStudyRelatedInstances
            assert item["00201206"]["Value"] == [2]        # NumberOfStudyRelatedSeries
            assert sorted(item["00080061"]["Value"]) == ["CT", "MR"]
        for i, (series, sop, data) in enumerate(items):
            node = nodes[(i + 2) % 3]  # read through a node that did not store it
            r = requests.get(f"{node.url}/dicom-web/studies/{study}/series/{series}/"
                             f"instances/{sop}", headers=SINGLE, timeout=60)
            assert r.status_code == 200 and r.content == data

        nodes[1].proc.send_signal(signal.SIGKILL)
        nodes[1].proc.wait(30)
        extra = to_part10(make_dataset(study=study, series=f"{study}.1",
                                       sop=f"{study}.1.99", seed=99, InstanceNumber=99))
        assert _stow(nodes[0].url, extra) == 200
        r = requests.get(f"{nodes[2].url}/dicom-web/studies/{study}/instances", timeout=60)
        assert r.status_code == 200 and len(r.json()) == 31

        assert requests.delete(f"{nodes[2].url}/dicom-web/studies/{study}",
                               timeout=60).status_code in (200, 204)
        for node in (nodes[0], nodes[2]):
            r = requests.get(f"{node.url}/dicom-web/studies",
                             params={"StudyInstanceUID": study}, timeout=60)
            assert r.status_code in (200, 204) and (r.status_code == 204 or r.json() == [])
            r = requests.get(f"{node.url}/dicom-web/studies/{study}/series/{study}.1/"
                             f"instances/{study}.1.1", headers=SINGLE, timeout=60)
            assert r.status_code == 404
    finally:
        for node in nodes:
            node.stop()
