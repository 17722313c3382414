"""A canned-answer DICOMweb stub for measuring the driver's own ceiling.

``python -m benchmarks.stub --port P --seed S --slices N`` serves, from memory, what a
perfect and infinitely fast archive would answer for CT study 0 of the data set:

* ``GET /dicom-web/studies/{study}`` — the study as stored (multipart, one write);
* ``GET /dicom-web/studies/{study}/series/{series}/instances`` — its QIDO answer;
* ``GET /dicom-web/studies`` (any query) — a one-study QIDO answer;
* ``POST /dicom-web/studies`` — reads and discards the body, answers ``{}``.

The driver's real code paths (streaming multipart parser, sha256, JSON parsing,
verification) run against it, so the numbers are an upper bound of what the driver can
measure on this machine (the stub shares the machine's cores with the driver).
Loopback only.
"""
from __future__ import annotations

import argparse
import json

from aiohttp import web

from .dataset import DataSet

BOUNDARY = "stub-boundary-5d1e"


def make_app(seed: int, slices: int) -> web.Application:
    ds = DataSet(seed, ct_studies=1, ct_slices=slices, tiny=0)
    insts = ds.ct_main()
    chunks = []
    for inst in insts:
        chunks += [f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
                   ds.build(inst), b"\r\n"]
    chunks.append(f"--{BOUNDARY}--\r\n".encode())
    study_body = b"".join(chunks)
    qido_body = json.dumps([{"0020000D": {"vr": "UI", "Value": [i.study]},
                             "0020000E": {"vr": "UI", "Value": [i.series]},
                             "00080018": {"vr": "UI", "Value": [i.sop]},
                             "00200013": {"vr": "IS", "Value": [i.instance_number]}}
                            for i in insts]).encode()

    study_item = json.dumps([{"0020000D": {"vr": "UI", "Value": [insts[0].study]},
                              "00080050": {"vr": "SH", "Value": [insts[0].accession]},
                              "00201208": {"vr": "IS", "Value": [len(insts)]}}]).encode()

    async def studies(request: web.Request) -> web.Response:
        return web.Response(body=study_item, content_type="application/dicom+json")

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def study(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'})
        resp.content_length = len(study_body)
        await resp.prepare(request)
        view = memoryview(study_body)
        for k in range(0, len(view), 1 << 20):   # 1 MiB writes, as a real server streams
            await resp.write(view[k:k + (1 << 20)])
        await resp.write_eof()
        return resp

    async def instances(request: web.Request) -> web.Response:
        return web.Response(body=qido_body, content_type="application/dicom+json")

    async def stow(request: web.Request) -> web.Response:
        async for _ in request.content.iter_any():
            pass
        return web.Response(body=b"{}", content_type="application/dicom+json")

    app = web.Application(client_max_size=1024**3)
    app.router.add_get("/ready", ready)
    app.router.add_get("/dicom-web/studies", studies)
    app.router.add_get("/dicom-web/studies/{study}", study)
    app.router.add_get("/dicom-web/studies/{study}/series/{series}/instances", instances)
    app.router.add_post("/dicom-web/studies", stow)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--slices", type=int, default=100)
    args = p.parse_args()
    web.run_app(make_app(args.seed, args.slices), host="127.0.0.1", port=args.port,
                access_log=None, print=None)


if __name__ == "__main__":
    main()
