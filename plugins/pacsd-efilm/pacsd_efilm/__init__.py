"""pacsd-efilm: e-film sheets (R-C1), built on ``pacsd.plugin_api`` only.

A film is made from a study on demand (``POST /api/v1/plugins/efilm/studies/{study}``,
or ``GET .../preview.png`` without storing): key images flagged by a Key Object
Selection in the study, else picked evenly across its images; each rendered through the
one retrieve path with the modality's window preset; laid out on a grid (per-modality
default, 1x1 up to 5x6) with hospital, exam, date, the patient name masked per policy
and scale bars; rendered to PNG and PDF and stored back through the one ingest path as a
Secondary Capture and an Encapsulated PDF in a new series of the same study.
"""
from __future__ import annotations

import io

import orjson
from aiohttp import web
from pydicom import dcmread

from pacsd.plugin_api import api_of, errors, hookimpl, note_audit, requires

from . import dicomio, sheet

__version__ = "0.1.0"
NAME = "efilm"
API = "/api/v1/plugins/efilm"
DEFAULTS = {
    "hospital": "",          # printed in the header; "" = the study's InstitutionName
    "mask_name": "partial",  # patient name on the film: none, partial, full
    "width_px": 1600,        # sheet size in pixels (portrait 14x17-inch film ratio)
    "height_px": 2000,
    "font_path": "",         # a TrueType/OpenType font with CJK glyphs; "" = search
    "auto": False,           # make the film by rule when the study becomes stable
}


def conf(api) -> dict:
    return {**DEFAULTS, **api.plugin_settings(NAME)}


def _v(item: dict, tag: str, default=""):
    vals = item.get(tag, {}).get("Value") or []
    if not vals:
        return default
    v = vals[0]
    if isinstance(v, dict):
        v = v.get("Alphabetic") or v.get("Ideographic") or ""
    return v


async def _images(api, study: str) -> tuple[list[dict], list[str]]:
    """All image instances of the study (series, then instance order), and the key
    images flagged by Key Object Selections in it (in their order)."""
    images, keys = [], []
    series = await api.search("series", {"includefield": "all"}, study_uid=study)
    series.sort(key=lambda s: int(_v(s, "00200011", 0) or 0))
    for s in series:
        uid = _v(s, "0020000E")
        for inst in sorted(await api.search("instance", {"includefield": "all"},
                                            study_uid=study, series_uid=uid),
                           key=lambda i: int(_v(i, "00200013", 0) or 0)):
            sop_class = _v(inst, "00080016")
            if sop_class == dicomio.KOS:
                row = await api.instance(study, uid, _v(inst, "00080018"))
                keys += dicomio.key_images_of_kos(await api.read_instance(row))
            elif _v(inst, "00280010") and "EFILM" not in (
                    inst.get("00080008", {}).get("Value") or []):  # images, not films
                images.append({"series": uid, "sop": _v(inst, "00080018"),
                               "series_number": _v(s, "00200011", ""),
                               "number": _v(inst, "00200013", ""),
                               "modality": _v(s, "00080060"),
                               "institution": _v(s, "00080080"),
                               "spacing": (inst.get("00280030", {}).get("Value") or [None])[0],
                               "columns": _v(inst, "00280011", 0)})
    return images, keys


def pick_evenly(n_available: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``range(n_available)``, first and last included."""
    if n >= n_available:
        return list(range(n_available))
    if n == 1:
        return [n_available // 2]
    return sorted({round(i * (n_available - 1) / (n - 1)) for i in range(n)})


async def make_film(api, study: str, *, layout: str | None = None, window: str | None = None,
                    mask: str | None = None) -> dict:
    """Choose, render and compose; returns the PNG, the PDF and what was used."""
    c = conf(api)
    found = await api.search("study", {"StudyInstanceUID": study, "includefield": "all"})
    if not found:
        raise errors.NotFound("no such study")
    images, keys = await _images(api, study)
    if not images:
        raise errors.Unprocessable("the study has no images to film")
    modality = images[0]["modality"]
    try:
        cols, rows = sheet.parse_layout(layout, modality)
        wname, wvalue = sheet.window_for(modality, window)
    except ValueError as e:
        raise errors.BadRequest(str(e)) from None
    policy = mask or c["mask_name"]
    if policy not in ("none", "partial", "full"):
        raise errors.BadRequest("mask is none, partial or full")
    by_sop = {i["sop"]: i for i in images}
    chosen = [by_sop[k] for k in keys if k in by_sop][: cols * rows]
    source = "key-object-selection" if chosen else "even"
    if not chosen:
        chosen = [images[i] for i in pick_evenly(len(images), cols * rows)]
    width, height = int(c["width_px"]), int(c["height_px"])
    cw, ch = sheet.cell_size(width, height, cols, rows, 110, 8)
    cells = []
    for im in chosen:
        row = await api.instance(study, im["series"], im["sop"])
        png = await api.rendered(row, 1, media_type="image/png", window=wvalue,
                                 viewport=(cw, ch))
        mm = None
        if im["spacing"] and im["columns"]:
            from PIL import Image
            rendered_w = Image.open(io.BytesIO(png)).width
            mm = float(im["spacing"]) * int(im["columns"]) / rendered_w
        cells.append(sheet.Cell(png=png, label=f"S{im['series_number']} #{im['number']}",
                                mm_per_pixel=mm))
    st = found[0]
    date = str(_v(st, "00080020"))
    header = sheet.Header(
        hospital=c["hospital"] or images[0]["institution"] or "",
        exam=" ".join(x for x in (str(_v(st, "00081030")), str(_v(st, "00080050"))) if x),
        date=f"{date[:4]}-{date[4:6]}-{date[6:]}" if len(date) == 8 else date,
        patient=sheet.mask_name(str(_v(st, "00100010")), policy),
        extra=f"{modality}  W:{wname}  {cols}x{rows}")
    img = await api.run(sheet.compose, cells, cols, rows, header, width=width,
                        height=height, font_path=c["font_path"])
    png, pdf = await api.run(sheet.to_png, img), await api.run(sheet.to_pdf, img)
    return {"png": png, "pdf": pdf, "layout": f"{cols}x{rows}", "window": wname,
            "key_images": [i["sop"] for i in chosen], "key_source": source}


async def _study_attrs(api, study: str) -> dict:
    """Patient / study attributes of the exam, from one of its stored instances."""
    rows = await api.instances(study)
    ds = dcmread(io.BytesIO(await api.read_instance(rows[0])), stop_before_pixels=True)
    return {kw: ds.get(kw) for kw in dicomio.COPIED if kw in ds}


async def store_film(api, study: str, film: dict) -> dict:
    """Store the film as SC + Encapsulated PDF in a new series of the study."""
    from pydicom.uid import generate_uid

    attrs = await _study_attrs(api, study)
    series = generate_uid()
    sc_uid, sc = dicomio.secondary_capture(attrs, series, film["png"], film["layout"])
    pdf_uid, pdf = dicomio.encapsulated_pdf(attrs, series, film["pdf"])
    for data in (sc, pdf):
        await api.store_instance(data, expected_study_uid=study)
    return {"study": study, "series": series, "secondary_capture": sc_uid,
            "encapsulated_pdf": pdf_uid}


def _params(request) -> dict:
    q = request.query
    return {"layout": q.get("layout"), "window": q.get("window"), "mask": q.get("mask")}


@requires("write", audit="efilm.created")
async def create(request: web.Request) -> web.Response:
    """POST /api/v1/plugins/efilm/studies/{study}?layout=4x5&window=lung&mask=partial"""
    api = api_of(request)
    study = request.match_info["study"]
    film = await make_film(api, study, **_params(request))
    stored = await store_film(api, study, film)
    note_audit(request, studies={study: 2}, layout=film["layout"], window=film["window"],
               key_source=film["key_source"])
    body = {**stored, "layout": film["layout"], "window": film["window"],
            "key_images": film["key_images"], "key_source": film["key_source"]}
    return web.Response(body=orjson.dumps(body), status=201, content_type="application/json")


@requires("read", audit="study-read")
async def preview(request: web.Request) -> web.Response:
    """GET /api/v1/plugins/efilm/studies/{study}/preview.png|pdf: the sheet, not stored."""
    api = api_of(request)
    film = await make_film(api, request.match_info["study"], **_params(request))
    kind = "png" if request.path.endswith(".png") else "pdf"
    note_audit(request, layout=film["layout"], window=film["window"])
    return web.Response(body=film[kind], content_type="image/png" if kind == "png"
                        else "application/pdf", headers={"Cache-Control": "no-store"})


@hookimpl
def register_routes(router, settings):
    router.add_post(API + "/studies/{study}", create)
    router.add_get(API + "/studies/{study}/preview.png", preview)
    router.add_get(API + "/studies/{study}/preview.pdf", preview)


async def has_film(api, study: str) -> bool:
    for s in await api.search("series", {"Modality": "OT"}, study_uid=study):
        for i in await api.search("instance", {"includefield": "00080008"}, study_uid=study,
                                  series_uid=_v(s, "0020000E")):
            if "EFILM" in (i.get("00080008", {}).get("Value") or []):
                return True
    return False


async def _auto_film(api, study: str) -> None:
    if await has_film(api, study):
        return  # one film per study by rule; more on demand
    try:
        film = await make_film(api, study)
    except errors.PacsdError as e:  # e.g. a study of reports only: nothing to film
        api.audit("efilm.skipped", outcome="failure", study_uid=study,
                  detail={"reason": e.reason[:80], "rule": "study-stable"})
        return
    stored = await store_film(api, study, film)
    api.audit("efilm.created", study_uid=study, object_count=2,
              detail={"rule": "study-stable", "layout": film["layout"],
                      "series": stored["series"]})


@hookimpl
def study_stable(api, study_uid):
    """R-C1 "by rule": film a study once it is stable, when ``auto`` is on."""
    if conf(api)["auto"]:
        return _auto_film(api, study_uid)
    return None
