"""Smoke test of the benchmark driver (benchmarks/): every phase at the smallest size
against a real ``pacsd serve`` subprocess, and proof that the verification rejects wrong
answers (a corrupting proxy in front of pacsd, truncated and altered bodies). No timing
asserts: benchmarks measure, tests only check that the measuring is right.
"""
from __future__ import annotations

import asyncio
import io

import numpy as np
import orjson
import pytest
from aiohttp import ClientSession, web
from pacsd_server import Server

from benchmarks import phases as P
from benchmarks import verify as V
from benchmarks.client import MultipartStream, new_session
from benchmarks.dataset import DataSet, Manifest, multipart_body
from benchmarks.runner import Config, Runner


@pytest.fixture(scope="module")
def pacsd(tmp_path_factory):
    srv = Server(str(tmp_path_factory.mktemp("pacsd-bench")))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def smoke_run(pacsd):
    """One driver run at the smallest size (its own event loop; the data it stored and
    the manifest are reused by the corrupting-proxy test)."""
    target = P.Target("pacsd", pacsd.url + "/dicom-web")
    runner = Runner(Config.smoke(), [target], log=lambda _: None)
    result = asyncio.run(runner.run())
    return runner, target, result


def test_every_phase_runs_and_verifies(pacsd, smoke_run):
    runner, target, result = smoke_run
    rows = result["targets"]["pacsd"]["rows"]
    phases = {r["phase"] for r in rows}
    assert {"load_ct", "stow_ct", "stow_tiny", "wado_study", "metadata_series",
            "metadata_series_gzip", "frame", "rendered", "thumbnail"} <= phases
    assert {f"qido_{k}" for k in P.QIDO_KINDS} <= phases
    bad = [(r["phase"], r["concurrency"], r["error_sample"]) for r in rows if not r["verified"]]
    assert not bad
    assert all(c["ok"] for c in result["targets"]["pacsd"]["checks"])
    # A second run on a non-empty archive must refuse: expected answers would be wrong.
    again = Runner(Config.smoke(seed=2), [P.Target("pacsd", pacsd.url + "/dicom-web")],
                   log=lambda _: None)
    with pytest.raises(RuntimeError, match="already holds"):
        asyncio.run(again.run())


def _corrupt(body: bytes, ctype: str) -> bytes:
    """Drop the last item of a JSON array; turn an image upside down; flip one byte in
    the middle of anything else."""
    if ctype.startswith("application/dicom+json") or ctype.startswith("application/json"):
        doc = orjson.loads(body)
        if isinstance(doc, list) and doc:
            return orjson.dumps(doc[:-1])
        return body
    if ctype.startswith("image/"):
        from PIL import Image
        out = io.BytesIO()
        Image.open(io.BytesIO(body)).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(
            out, "JPEG")
        return out.getvalue()
    if len(body) > 64:
        b = bytearray(body)
        b[len(b) // 2] ^= 0x55
        return bytes(b)
    return body


async def test_wrong_answers_score_nothing(pacsd, smoke_run, aiohttp_server):
    runner, real, _ = smoke_run
    upstream = pacsd.url
    client = ClientSession(auto_decompress=False)

    async def proxy(request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("accept", "content-type")}
        headers["Accept-Encoding"] = "identity"
        async with client.request(request.method, upstream + request.path_qs,
                                  headers=headers, data=await request.read()) as r:
            body, status = await r.read(), r.status
            ctype = r.headers.get("Content-Type", "")
        return web.Response(body=_corrupt(body, ctype), status=status,
                            headers={"Content-Type": ctype})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    server = await aiohttp_server(app)
    bad = P.Target("proxy", str(server.make_url("/dicom-web")).rstrip("/"),
                   manifest=real.manifest, session=new_session(4))
    try:
        ct = [i for i in real.manifest.by_sop.values() if i.kind == "ct"]
        studies = sorted({i.study for i in ct})
        series = sorted({(i.study, i.series) for i in ct})
        book = P.QueryBook(real.manifest)
        measurements = {
            "wado": await P.wado_study(bad, studies, 1, 1, runner.payload),
            "frame": await P.frames(bad, ct, 1, runner.payload),
            "metadata": await P.metadata(bad, series, 1, gzip=False),
            "qido": await P.qido(bad, book, "instances_in_series", 1, 1),
            "rendered": await P.rendered(bad, runner.ds, ct[:1], 1, {}),
            "thumbnail": await P.thumbnail(bad, runner.ds, [(ct[0].study, ct[0].series, ct)],
                                           1, {}),
        }
        for name, m in measurements.items():
            assert m.samples and all(not s.ok for s in m.samples), name
            assert all("wrong answer" in s.error for s in m.samples), (name, m.errors)
            assert not P.row_from(name, m, rep=0)["verified"]
    finally:
        await bad.session.close()
        await client.close()


def test_multipart_parser_rejects_truncated_and_altered_bodies():
    ds = DataSet(5, ct_studies=1, ct_slices=3, tiny=0)
    insts = ds.ct_main()
    payload = {i.sop: ds.build(i) for i in insts}
    body = multipart_body(list(payload.values()), "b0undary")
    by_sha = {i.sha256: i.sop for i in insts}
    want = set(payload)

    def parse(data: bytes, lookup) -> list:
        s = MultipartStream("b0undary", lookup=lookup)
        for k in range(0, len(data), 1000):
            s.feed(data[k:k + 1000])
        return s.close()

    for lookup in (None, V.instance_lookup(payload)):
        V.check_instances(parse(body, lookup), want, by_sha)      # the right answer passes
        with pytest.raises(V.VerificationError):
            parse(body[:-10], lookup)                               # truncated
        pos = len(body) // 2
        for wrong in (body[:pos] + bytes([body[pos] ^ 1]) + body[pos + 1:],   # one bit
                      body[:pos] + body[pos + 2:],                            # shorter
                      body[:pos] + b"xx" + body[pos:]):                       # longer
            with pytest.raises(V.VerificationError):
                V.check_instances(parse(wrong, lookup), want, by_sha)
        one_missing = multipart_body(list(payload.values())[:-1], "b0undary")
        with pytest.raises(V.VerificationError):
            V.check_instances(parse(one_missing, lookup), want, by_sha)


def test_other_checks_reject_wrong_answers():
    with pytest.raises(V.VerificationError):   # STOW: one instance not acknowledged
        V.check_stow(200, orjson.dumps({"00081199": {"vr": "SQ", "Value": [
            {"00081155": {"vr": "UI", "Value": ["1.2.3"]}}]}}), {"1.2.3", "1.2.4"})
    with pytest.raises(V.VerificationError):   # STOW: a failure listed
        V.check_stow(200, orjson.dumps({"00081198": {"vr": "SQ", "Value": [{}]}}), set())
    item = {"0020000D": {"vr": "UI", "Value": ["1.2"]},
            "00201208": {"vr": "IS", "Value": [4]}}
    with pytest.raises(V.VerificationError):   # QIDO: wrong count
        V.check_counts([item], V.STUDY_UID, V.N_STUDY_INSTANCES, {"1.2": 5})
    with pytest.raises(V.VerificationError):   # QIDO: duplicate
        V.check_uid_set([item, item], V.STUDY_UID, {"1.2"})
    with pytest.raises(V.VerificationError):   # paging: page too short
        V.check_page([item], V.STUDY_UID, {"1.2", "1.3", "1.4"}, 2, 0)
    from PIL import Image
    ds = DataSet(5, ct_studies=1, ct_slices=3, tiny=0)
    insts = ds.ct_main()
    images = {i.instance_number: ds.expected_render(i) for i in insts}

    def jpeg(arr: np.ndarray, size: int | None = None) -> bytes:
        img = Image.fromarray(np.ascontiguousarray(arr))
        if size:
            img = img.resize((size, size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        img.save(out, "JPEG", quality=90)
        return out.getvalue()

    assert V.check_image(jpeg(images[2]), images.get, 2) == 2
    assert V.check_image(jpeg(images[3], 128), images.get, {1, 2, 3}, max_side=256) == 3
    for wrong, n in ((jpeg(images[2][::-1]), 2),         # upside down
                     (jpeg(images[3]), 2),               # another slice
                     (jpeg(images[2], 256), 2),          # wrong size
                     (b"not an image", 2)):
        with pytest.raises(V.VerificationError):
            V.check_image(wrong, images.get, n)
    m = Manifest()
    m.add(insts[0])
    assert m.study_count(insts[0].study) == 1


def test_memory_phase_samples_the_server_process(tmp_path):
    """Issue 6 item 4: `benchmarks memory` stores a study, resets the server's peak RSS
    and samples /proc/PID/status while every retrieval is verified (no size asserted)."""
    from benchmarks import memory

    srv = Server(str(tmp_path))
    try:
        target = P.Target("pacsd", srv.url + "/dicom-web", pid=srv.proc.pid)
        out = asyncio.run(memory.measure(target, size_mb=3, concurrency=2, requests=2,
                                         seed=5, log=lambda _: None))
    finally:
        srv.stop()
    w = out["retrieve"]
    assert out["load"]["verified"] and w["verified"], w["error_sample"]
    assert w["instances"] == 6 and w["requests"] == 2 and w["bytes"] >= 2 * w["study_bytes"]
    assert w["hwm_reset"] and w["samples"] >= 1
    assert 0 < w["rss_before_mb"] <= w["rss_max_sampled_mb"]
    assert w["hwm_mb"] > 0
    md = memory.markdown({"pacsd": out}, "cmd", "machine")
    assert "| pacsd | " in md


def test_soak_verifies_a_mixed_load_and_samples_rss(tmp_path):
    """Issue 6 item 4 (soak): `benchmarks soak` runs every operation of its rotation
    against a real pacsd with every answer verified, samples VmRSS every second and fits
    the slope; a wrong expectation is counted as an error, not as a fast answer."""
    from benchmarks import soak as S
    from benchmarks.client import new_session

    assert S.slope_per_min([(0, 100.0), (30, 105.0), (60, 110.0)]) == pytest.approx(10.0)
    assert S.slope_per_min([(0, 100.0)]) == 0.0
    srv = Server(str(tmp_path))
    try:
        out = asyncio.run(S.soak(srv.url + "/dicom-web", srv.proc.pid, minutes=0.08,
                                 concurrency=2, seed=6, ct_studies=1, slices=4,
                                 log=lambda _: None))
        meta = asyncio.run(S.soak(srv.url + "/dicom-web", srv.proc.pid, minutes=0.08,
                                  concurrency=2, seed=8, ct_studies=1, slices=4,
                                  log=lambda _: None, rotation="metadata"))

        async def with_wrong_expectations():
            s = S.Soak(srv.url + "/dicom-web", 7, 1, 3, lambda _: None)
            s.session = new_session(2)
            try:
                await s.setup()
                sop = s.ct[0].sop
                s.payload[sop] = s.payload[sop][:-1] + bytes([s.payload[sop][-1] ^ 1])
                await s.run(3.0, 2)
            finally:
                await s.session.close()
            return s.stats
        stats = asyncio.run(with_wrong_expectations())
    finally:
        srv.stop()
    assert out["verified"], {k: v["error_sample"] for k, v in out["ops"].items()}
    assert set(out["ops"]) == set(S.ROTATION)
    assert out["samples"] >= 3 and out["tiny_studies_stored"] >= 3
    assert 0 < out["rss_setup_mb"] <= out["rss_peak_sampled_mb"] <= out["hwm_mb"] + 1
    assert "| operation |" in S.markdown(out, "cmd", "machine")
    # The caches' real size comes from the server (GET /api/v1/admin/metrics) with every
    # RSS sample; the metadata rotation reads study metadata too, every answer verified.
    assert out["metrics_errors"] == 0 and out["cached_end_mb"] > 0
    assert out["metadata_entries_end"] >= 1 and out["render_entries_end"] >= 1
    assert meta["verified"], {k: v["error_sample"] for k, v in meta["ops"].items()}
    assert set(meta["ops"]) == set(S.ROTATIONS["metadata"])
    assert meta["metadata_entries_end"] > out["metadata_entries_end"]
    assert stats["wado_study"]["errors"] > 0 and stats["frame"]["errors"] > 0
    assert stats["qido_patient"]["errors"] == 0 and stats["stow"]["errors"] == 0


def test_scale_curve_verifies_every_kind_at_two_sizes():
    """Issue 6 item 3: `benchmarks scale` fills the index through the catalogue's batched
    writes, serves it with pacsd and verifies every query kind at each size; the
    expected-answer book picks a case without copying the index's keys (the copy used
    to grow with the index inside the timed request)."""
    from benchmarks import scale as SC

    out = SC.run([500, 1000], ["sqlite"], n1=10, n16=20, log=lambda _: None)
    assert [r["instances"] for r in out["rows"]] == [500, 1000]
    bad = {(r["instances"], k): v["error"] for r in out["rows"]
           for k, v in r["kinds"].items() if not v["verified"]}
    assert not bad
    assert set(out["rows"][0]["kinds"]) == set(SC.KINDS)


def _dcmtk_or_skip():
    from benchmarks import dimse as D
    if D.missing_tools():
        pytest.skip("DCMTK is needed: apt-get install dcmtk")
    return D


def test_dimse_phases_run_and_verify(tmp_path):
    """Issue 6 (R-H1): the DIMSE phases (C-STORE of CT and tiny files with storescu,
    C-FIND by PatientID, C-GET and C-MOVE of a CT study to the driver's storescp) run
    against a real pacsd with DCMTK, and every answer verifies: sent instances listed
    by QIDO-RS, the patient's studies found, each retrieved file byte-exact."""
    from benchmarks.servers import free_port
    D = _dcmtk_or_skip()
    move_port = free_port()
    srv = Server(str(tmp_path), "--peer", f"{D.MOVE_AET}=127.0.0.1:{move_port}",
                 dicom_port=None)
    try:
        target = P.Target("pacsd", srv.url + "/dicom-web")
        target.dicom = D.DicomAddress("127.0.0.1", srv.dicom_port, "PACSD")
        result = asyncio.run(Runner(Config.smoke(dimse_move_port=move_port), [target],
                                    log=lambda _: None).run())
    finally:
        srv.stop()
    rows = [r for r in result["targets"]["pacsd"]["rows"] if r["phase"].startswith("dimse")]
    assert {r["phase"] for r in rows} == {"dimse_store_ct", "dimse_store_tiny", "dimse_find",
                                          "dimse_get", "dimse_move"}
    assert not [(r["phase"], r["error_sample"]) for r in rows if not r["verified"]]
    # C-STOREd instances entered the manifest: C-FIND expectations counted them.
    assert any(i.kind == "tiny" and i.patient_id for i in target.manifest.by_sop.values())
    from benchmarks import report
    s = report.summarise(result["targets"]["pacsd"]["rows"])
    assert s["dimse_get@1"]["headline"] == "mb_s" and s["dimse_find@1"]["headline"] == "p50_ms"
    goals = [g for g, _, _ in report.targets(s, s)]
    assert "DIMSE C-MOVE study MB/s >= Orthanc's" in goals


def test_dimse_checks_reject_wrong_answers(tmp_path):
    """A received file with altered pixel data, a missing or an extra instance, and a
    C-FIND answer naming the wrong studies all fail verification."""
    from benchmarks import dimse as D
    ds = DataSet(8, ct_studies=1, ct_slices=3, tiny=0)
    insts = ds.ct_main()
    data = {i.sop: ds.build(i) for i in insts}
    expected = {i.sop: i.pixel_sha256 for i in insts}
    folder = tmp_path / "in"
    folder.mkdir()
    for k, i in enumerate(insts):
        (folder / f"CT{k}").write_bytes(data[i.sop])
    assert D.check_received(folder, expected) == sum(len(b) for b in data.values())
    with pytest.raises(D.VerificationError):            # one instance missing
        D.check_received(folder, {**expected, "1.2.3.4": "0" * 64})
    with pytest.raises(D.VerificationError):            # one instance not asked for
        D.check_received(folder, dict(list(expected.items())[:2]))
    bad = bytearray(data[insts[1].sop])
    bad[-7] ^= 0x10                                     # a pixel differs
    (folder / "CT1").write_bytes(bytes(bad))
    with pytest.raises(D.VerificationError, match="pixel data"):
        D.check_received(folder, expected)
    (folder / "CT1").write_bytes(data[insts[1].sop][:400])  # truncated
    with pytest.raises(D.VerificationError):
        D.check_received(folder, expected)
    import pydicom
    find = tmp_path / "find"
    find.mkdir()
    rsp = pydicom.Dataset()
    rsp.StudyInstanceUID = insts[0].study
    rsp.save_as(str(find / "rsp0001.dcm"), implicit_vr=True, little_endian=True)
    D.check_find(find, {insts[0].study})
    with pytest.raises(D.VerificationError):
        D.check_find(find, {insts[0].study, "1.2.3"})


def test_server_cpu_counts_the_worker_processes():
    """Issue 6: a `pacsd serve --workers N` supervisor's own /proc stat does not count
    its workers; every A/B tool reads the whole tree (benchmarks.procstat), so a server
    whose work is done in a forked child is not reported as costing 0 ms."""
    import subprocess
    import sys
    import time

    from benchmarks.procstat import children, cpu_s
    busy = ("import os, time\n"
            "if os.fork() == 0:\n"
            "    t = time.time()\n"
            "    while time.time() - t < 0.5: pass\n"
            "    time.sleep(2); os._exit(0)\n"
            "time.sleep(3)\n")
    proc = subprocess.Popen([sys.executable, "-c", busy])
    try:
        time.sleep(1.0)  # the child has spun 0.5 s and sleeps
        assert children(proc.pid) != [proc.pid]
        assert cpu_s(proc.pid) >= 0.3
    finally:
        proc.kill()
        proc.wait()
