"""pacsd-share: share links, QR codes and the patient's phone pages (R-C3, R-C5, R-C6,
R-E5; SEC-1..SEC-12 against share links). Uses only ``pacsd.plugin_api``.

Flow: staff (``POST /api/v1/plugins/share/links``, or ``pacsd share create``) makes a link
for chosen studies or for a patient's space; the response carries the URL once and its QR
code (segno). The patient opens ``/plugins/share/s/<token>``: the landing page exchanges
the URL token for an HttpOnly, SameSite=Lax (Secure over TLS) session cookie and
redirects to a token-free URL (SEC-10); the second factor unlocks the session; from then
on the patient's requests are an actor ``share:<link id>`` with the ``guest`` role, and
this plugin's ``permission_allowed`` confines it to its own pages and the link's studies
(SEC-1, SEC-12). Images come from the one retrieve path through the plugin's own routes.
The phone image view (viewer-web's ``phone.html``, R-C4 / R-D1) reads DICOMweb series
metadata and frames from ``/plugins/share/dicom-web/...``: pacsd's own WADO-RS handlers,
run as the share actor, whose ``query_filter`` confines every read to the link's studies
(a study outside it is not found: 404).
Every grant, opening, verification, denial and read is audited (R-C6).
"""
from __future__ import annotations

import base64
import io
import secrets
import time
from urllib.parse import quote, urlsplit

import orjson
from aiohttp import web

from dataclasses import dataclass

from pacsd.plugin_api import (Actor, api_of, client_device, client_ip,
                              current_actor, errors, hookimpl, json_object, note_audit,
                              public, requires,
                              retrieve_frames, retrieve_metadata)
from pacsd.services.scoping import OneOf

from . import links as L
from . import pages

__version__ = "0.1.0"
NAME = "share"
COOKIE = "pacsd_share"
PREFIX = pages.PREFIX
API = "/api/v1/plugins/share"
#: [plugins.share] settings and their defaults (R-E5: QR parameters configurable).
DEFAULTS = {
    "viewer_url": "",          # QR/SMS target; "{token}" is replaced; "" = landing URL
    "token_service_url": "",   # base URL of the pacsd that exchanges tokens; "" = public_url
    "link_ttl_days": 30.0,     # default lifetime of a link
    "session_ttl_s": 43200.0,  # lifetime of the cookie session after opening a link
    "max_attempts": 5,         # wrong second-factor answers before the link locks (SEC-8)
    "cache_ttl_s": 30.0,       # revocation takes effect within this on other processes
    "qr_scale": 8,             # QR module size in pixels (PNG)
    "qr_error": "m",           # QR error correction level: l, m, q, h
    "rate_limit": 20,          # refused link openings per address before 429 (SEC-8)
    "rate_window_s": 300.0,    # ... within this sliding window
    "service_default": True,   # the digital service where no switch says otherwise (R-C9)
    "enrol_code_ttl_s": 300.0,   # self-enrolment: SMS code lifetime (R-C3)
    "enrol_max_attempts": 5,     # ... wrong codes before it is void
    "enrol_rate_limit": 10,      # ... code requests / failed answers per address per window
    "enrol_phone_limit": 3,      # ... codes sent to one phone per window
    "enrol_rate_window_s": 3600.0,
    # R-C4: the phone image view (viewer-web's phone.html, served by pacsd at /viewer);
    # "" = images open the server-rendered picture view only
    "phone_viewer_url": "/viewer/phone.html",
}
SECURITY_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                    "Content-Security-Policy": "default-src 'none'; img-src 'self'; "
                    "style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"}


def conf(api) -> dict:
    out = dict(DEFAULTS)
    out.update(api.plugin_settings(NAME))
    return out


# --- hooks ---------------------------------------------------------------------------------

@hookimpl
def register_tables():
    return L.SCHEMA


@hookimpl
def api_ready(api):
    c = conf(api)
    api.plugin_state(NAME).update(sessions={}, limiter=api.rate_limiter(
        f"{NAME}.open", int(c["rate_limit"]), float(c["rate_window_s"])))


def _cache(api) -> dict:
    return api.plugin_state(NAME).setdefault("sessions", {})


def _session(api, token: str) -> L.Session | None:
    """The session of a cookie, cached for ``cache_ttl_s`` (the hook must be quick; a
    miss is one indexed lookup). Revocation in this process clears the cache."""
    key = L.digest(token)
    cache = _cache(api)
    hit = cache.get(key)
    now = time.time()
    if hit is not None and hit[0] > now:
        return hit[1]
    sess = api.read(lambda c: L.session_by_token(c, token))
    cache[key] = (now + float(conf(api)["cache_ttl_s"]), sess)
    return sess


def _forget(api) -> None:
    _cache(api).clear()


@dataclass(frozen=True)
class ShareActor(Actor):
    """A verified share session: ``studies`` is its link's scope (``query_filter``)."""
    studies: tuple[str, ...] = ()


@hookimpl
def query_filter(actor, action):
    """R-C5, SEC-1: whatever core path a share actor reads through (the phone viewer's
    DICOMweb metadata and frames), it sees the link's studies and nothing else."""
    if isinstance(actor, ShareActor):
        return OneOf("study_instance_uid", actor.studies)
    if getattr(actor, "id", "").startswith("share:"):  # never unscoped
        return OneOf("study_instance_uid", ())
    return None


@hookimpl
def actor_from_request(request):
    """A verified share session on the plugin's own pages becomes ``share:<link>``."""
    if not request.path.startswith(PREFIX + "/") or "Authorization" in request.headers:
        return None
    token = request.cookies.get(COOKIE)
    if not token:
        raise _reopen()
    api = api_of(request)
    sess = _session(api, token)
    now = time.time()
    if sess is None or not sess.verified or sess.expires_at <= now \
            or sess.link.state(now) != "ok":
        raise _reopen("this share session is not valid: open the link again")
    request["share.session"] = sess
    return ShareActor(id=f"share:{sess.link.id}", name=f"share link {sess.link.id}",
                      roles=frozenset({"guest"}), studies=tuple(sess.link.studies))


def _reopen(reason: str = "open the link you were given again") -> errors.Unauthorized:
    return errors.Unauthorized(reason, headers={
        "WWW-Authenticate": 'Bearer realm="pacsd-share", error="invalid_token"'})


@hookimpl
def permission_allowed(actor, action, resource):
    """A share actor reads its own pages and the studies of its link, nothing else."""
    if not actor.id.startswith("share:"):
        return None
    if action != "read" or not resource.route.startswith(PREFIX + "/"):
        return False
    return None  # the study check needs the link: done by _scope() in every handler


def _scope(request) -> L.Link:
    """The link of this request's verified share session (401 without one, e.g. a staff
    caller or security disabled), and the study in the URL must be in its scope (403 —
    the same answer whether or not such a study exists, SEC-1, SEC-9)."""
    sess = request.get("share.session")
    if sess is None or not current_actor(request).id.startswith("share:"):
        raise _reopen()
    study = request.match_info.get("study")
    if study is not None and study not in sess.link.studies:
        api_of(request).audit("share.denied", outcome="denied",
                              actor=current_actor(request), source_ip=client_ip(request),
                              device=client_device(request),
                              detail={"link": sess.link.id, "reason": "out-of-scope",
                                      "route": request.match_info.route.resource.canonical})
        raise errors.Forbidden("not part of this share")
    return sess.link


def _html(text: str, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html",
                        charset="utf-8", headers={**SECURITY_HEADERS, **(headers or {})})


async def service_enabled(api, **kw) -> bool:
    """The digital service's switch (R-C9, ``service.py``)."""
    from .service import enabled
    return await enabled(api, **kw)


def _service_page() -> web.Response:
    return _html(pages.message("服务未开通", "Service not enabled",
                               "该医院或您的数字影像服务未开通，请联系医院。",
                               "The digital image service is not enabled for you or "
                               "this hospital. Please contact the hospital."), status=403)


async def _enabled_studies(api, link: L.Link, studies) -> list[str]:
    """The studies of ``studies`` the service is on for (none when off for the patient)."""
    from .service import study_enabled
    if link.patient_id and not await service_enabled(api, patient_id=link.patient_id):
        return []
    return [u for u in studies if await study_enabled(api, u, link.patient_id)]


async def _allowed(request) -> "L.Link | web.Response":
    """``_scope`` plus the service switch (R-C9): the "service not enabled" page when it
    is off for the link's patient or the exam in the URL."""
    link = _scope(request)
    api = api_of(request)
    study = request.match_info.get("study")
    off = (link.patient_id and not await service_enabled(api, patient_id=link.patient_id))
    if not off and study is not None:
        off = not await _enabled_studies(api, link, [study])
    if off:
        _audit(request, "denied", "denied", link.id, reason="service-off")
        return _service_page()
    return link


def _audit(request, event, outcome="success", link=None, **detail):
    api_of(request).audit(f"share.{event}", outcome=outcome, actor=current_actor(request)
                          if request.get("pacsd.actor") else None,
                          source_ip=client_ip(request), device=client_device(request),
                          detail={"link": link, **detail})


# --- the patient's side: landing, second factor -------------------------------------------

_REASONS = {
    "unknown": ("链接无效", "This link is not valid."),
    "expired": ("链接已过期", "This link has expired."),
    "revoked": ("链接已被撤销", "This link was withdrawn."),
    "locked": ("验证失败次数过多，链接已锁定，请联系医院", "Too many wrong answers: the link is locked. "
               "Please contact the hospital."),
}


def _denied_page(reason: str) -> web.Response:
    zh, en = _REASONS[reason]
    return _html(pages.message("无法打开", "Cannot open", zh, en), status=401,
                 headers={"WWW-Authenticate": f'Bearer realm="pacsd-share", error="{reason}"'})


@public
async def landing(request: web.Request) -> web.Response:
    """GET /plugins/share/s/{token}: exchange the URL token for a session cookie and
    redirect to a token-free URL (SEC-10). The token never appears in the audit trail."""
    api = api_of(request)
    limiter = api.plugin_state(NAME)["limiter"]
    ip = client_ip(request)
    wait = limiter.retry_after(ip)
    if wait is not None:   # SEC-8: token guessing from one address
        _audit(request, "denied", "denied", reason="rate-limited", step="landing")
        raise errors.TooManyRequests("too many invalid links from this address",
                                     retry_after=wait)
    token = request.match_info["token"]
    link = await api.run(api.read, lambda c: L.link_by_token(c, token)) \
        if 20 <= len(token) <= 100 else None
    now = time.time()
    reason = "unknown" if link is None else link.state(now)
    if reason != "ok":
        limiter.failed(ip)
        _audit(request, "denied", "denied", link.id if link else None, reason=reason,
               step="landing")
        return _denied_page(reason)
    if (link.patient_id and not await service_enabled(api, patient_id=link.patient_id)) \
            or (link.studies and not await _enabled_studies(api, link, link.studies)):
        _audit(request, "denied", "denied", link.id, reason="service-off", step="landing")
        return _service_page()
    ttl = float(conf(api)["session_ttl_s"])
    session = await api.run(api.write, lambda c: L.open_session(c, link.id, ttl))
    _audit(request, "opened", link=link.id)
    resp = web.HTTPSeeOther(PREFIX + "/", headers=SECURITY_HEADERS)
    resp.set_cookie(COOKIE, session, max_age=int(ttl), path=PREFIX + "/", httponly=True,
                    samesite="Lax", secure=_is_tls(request))
    raise resp


def _start(link: L.Link) -> str:
    """Where a verified session starts: the shared image, else the exam list."""
    if link.focus and link.studies:
        return (f"{PREFIX}/exams/{quote(link.studies[0], safe='')}/series/"
                f"{quote(link.focus['series'], safe='')}?sop={quote(link.focus['sop'], safe='')}")
    return PREFIX + "/exams"


def _is_tls(request: web.Request) -> bool:
    return request.secure or request.headers.get("X-Forwarded-Proto", "") == "https"


def _pending(request) -> L.Session | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    api = api_of(request)
    _cache(api).pop(L.digest(token), None)
    return api.read(lambda c: L.session_by_token(c, token))


@public
async def home(request: web.Request) -> web.Response:
    """GET /plugins/share/: the second-factor form, or on to the exams once verified."""
    api = api_of(request)
    token = request.cookies.get(COOKIE)
    sess = await api.run(lambda: _pending(request)) if token else None
    now = time.time()
    if sess is None or sess.expires_at <= now:
        return _denied_page("unknown")
    if sess.link.state(now) != "ok":
        return _denied_page(sess.link.state(now))
    if sess.verified:
        raise web.HTTPSeeOther(_start(sess.link), headers=SECURITY_HEADERS)
    left = int(conf(api)["max_attempts"]) - sess.link.failed_attempts
    error = "答案不正确 · Wrong answer" if request.query.get("e") else None
    return _html(pages.factor_form(sess.link.factor_kind, error, left))


def _same_origin(request: web.Request) -> bool:
    """SEC-17: a cookie-authenticated POST must come from our own pages. Browsers say so
    in ``Sec-Fetch-Site``; with ``Referrer-Policy: no-referrer`` their ``Origin`` of a
    form post is ``null``, so a non-null Origin is checked only when there is no
    Sec-Fetch-Site. Neither header (old clients, scripts): the SameSite=Lax cookie
    already keeps cross-site form posts from carrying the session."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("Origin")
    if origin and origin != "null":
        return urlsplit(origin).netloc == request.host
    return True


@public
async def verify(request: web.Request) -> web.Response:
    """POST /plugins/share/verify: check the second factor (limited attempts, SEC-8)."""
    api = api_of(request)
    if not _same_origin(request):
        _audit(request, "denied", "denied", reason="cross-origin", step="verify")
        raise errors.Forbidden("cross-site request refused")
    form = await request.post()
    answer = str(form.get("answer", ""))[:32]
    token = request.cookies.get(COOKIE)
    sess = await api.run(lambda: _pending(request)) if token else None
    now = time.time()
    if sess is None or sess.expires_at <= now:
        return _denied_page("unknown")
    limit = int(conf(api)["max_attempts"])
    result = await api.run(api.write, lambda c: L.check_factor(c, sess.id, answer, limit))
    _forget(api)
    if result == "ok":
        _audit(request, "verified", link=sess.link.id)
        raise web.HTTPSeeOther(_start(sess.link), headers=SECURITY_HEADERS)
    _audit(request, "denied", "denied", sess.link.id,
           reason="wrong-factor" if result == "wrong" else result, step="verify")
    if result == "wrong":
        raise web.HTTPSeeOther(PREFIX + "/?e=1", headers=SECURITY_HEADERS)
    return _denied_page(result)


# --- the patient's side: exams, series, images (all through the middleware) ---------------

def _v(item: dict, tag: str, default: str = "") -> str:
    vals = item.get(tag, {}).get("Value") or []
    if not vals:
        return default
    v = vals[0]
    if isinstance(v, dict):
        v = v.get("Alphabetic") or v.get("Ideographic") or ""
    return str(v)


def _date(d: str) -> str:
    return f"{d[:4]}-{d[4:6]}-{d[6:8]}" if len(d) == 8 and d.isdigit() else d


def mask_name(name: str) -> str:
    """A patient name with all but its first character masked (no full name on pages
    that may be forwarded; R-C1 / SEC-11 spirit)."""
    name = name.replace("^", " ").strip()
    return (name[0] + "*" * min(len(name) - 1, 3)) if name else ""


async def _studies(api, link: L.Link) -> list[dict]:
    """The link's studies (QIDO); a patient space also takes in the patient's new
    studies, minus the hidden ones, and records the wider scope."""
    if link.patient_id:
        found = await api.search("study", {"PatientID": link.patient_id,
                                           "includefield": "all"})
    else:
        found = []
        for uid in link.studies:
            found += await api.search("study", {"StudyInstanceUID": uid,
                                                "includefield": "all"})
    if link.kind == "patient":
        uids = [_v(s, "0020000D") for s in found if _v(s, "0020000D") not in link.hidden]
        if set(uids) != set(link.studies):
            await api.run(api.write, lambda c: L.set_studies(c, link.id, uids))
            _forget(api)
        scope = set(uids)
    else:
        scope = set(link.studies)
    out = [s for s in found if _v(s, "0020000D") in scope]
    out.sort(key=lambda s: _v(s, "00080020"), reverse=True)
    return out


@requires("read", audit="query")
async def exams(request: web.Request) -> web.Response:
    link = await _allowed(request)
    if isinstance(link, web.Response):
        return link
    api = api_of(request)
    found = await _studies(api, link)
    on = set(await _enabled_studies(api, link, [_v(s, "0020000D") for s in found]))
    found = [s for s in found if _v(s, "0020000D") in on]   # R-C9: nothing of them shows
    items = []
    for s in found:
        uid = _v(s, "0020000D")
        # The hospital is a series attribute (General Equipment): R-C4 lists by it.
        first = await api.search("series", {"includefield": "00080080", "limit": "1"},
                                 study_uid=uid)
        items.append({"uid": uid, "description": _v(s, "00081030"),
                      "modalities": " ".join((s.get("00080061", {}).get("Value") or [])),
                      "date": _date(_v(s, "00080020")),
                      "institution": _v(first[0], "00080080") if first else "",
                      "series": _v(s, "00201206", "0"), "images": _v(s, "00201208", "0")})
    name = mask_name(_v(found[0], "00100010")) if found else ""
    q = request.query.get("q", "").strip()[:64]
    if q:  # R-C4: keyword search across the patient's hospitals and exams
        words = q.lower().split()
        items = [it for it in items if all(
            w in " ".join((it["description"], it["modalities"], it["date"],
                           it["institution"])).lower() for w in words)]
    note_audit(request, results=len(items), link=link.id, search=bool(q))
    return _html(pages.exams(items, name, q, bool(request.query.get("thanks"))))


ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


async def _series(api, study: str) -> list[dict]:
    """Series of a study with their images; e-film series (ImageType EFILM) flagged;
    Encapsulated PDFs other than e-films listed as the series' documents (reports)."""
    out = []
    for s in await api.search("series", {"includefield": "all"}, study_uid=study):
        uid = _v(s, "0020000E")
        inst = await api.search("instance", {"includefield": "all"}, study_uid=study,
                                series_uid=uid)
        inst.sort(key=lambda i: int(_v(i, "00200013", "0") or 0))
        sops = [_v(i, "00080018") for i in inst
                if _v(i, "00280010")]  # with Rows: an image, not an SR / KOS / PDF
        docs = [{"sop": _v(i, "00080018"), "title": _v(i, "00420010"),
                 "label": _v(i, "00700080"), "date": _date(_v(i, "00080023"))}
                for i in inst if _v(i, "00080016") == ENCAPSULATED_PDF
                and _v(i, "00420010") != "E-film"]
        efilm = any("EFILM" in (i.get("00080008", {}).get("Value") or []) for i in inst)
        out.append({"uid": uid, "modality": _v(s, "00080060"),
                    "description": _v(s, "0008103E"), "number": _v(s, "00200011"),
                    "images": len(sops), "sop": sops[len(sops) // 2] if sops else "",
                    "sops": sops, "docs": docs, "efilm": efilm})
    out.sort(key=lambda s: int(s["number"] or 0))
    return out


def _reports(series: list[dict]) -> list[dict]:
    """Report documents, newest first; a preliminary is not shown once a final exists
    (R-C2: the final replaces it after review)."""
    docs = [dict(d, series=s["uid"]) for s in series for d in s["docs"]]
    docs.reverse()
    if any(d["label"] == "FINAL" for d in docs):
        docs = [d for d in docs if d["label"] != "PRELIMINARY"]
    return docs


@requires("read", audit="study-read")
async def study(request: web.Request) -> web.Response:
    link = await _allowed(request)
    if isinstance(link, web.Response):
        return link
    api = api_of(request)
    uid = request.match_info["study"]
    found = await api.search("study", {"StudyInstanceUID": uid, "includefield": "all"})
    if not found:
        raise errors.Forbidden("not part of this share")
    series = await _series(api, uid)
    from .care import text_reports
    texts = await text_reports(api, uid)
    # R-C4: swipe between the exams of the share (newest first, as listed)
    order = [_v(s, "0020000D") for s in await _studies(api, link)]
    order = await _enabled_studies(api, link, order)
    i = order.index(uid) if uid in order else -1
    prev_uid = order[i - 1] if i > 0 else None
    next_uid = order[i + 1] if 0 <= i < len(order) - 1 else None
    nonce = secrets.token_urlsafe(16)
    csp = SECURITY_HEADERS["Content-Security-Policy"] + f"; script-src 'nonce-{nonce}'"
    note_audit(request, link=link.id)
    return _html(pages.study(uid, _v(found[0], "00081030"), _date(_v(found[0], "00080020")),
                             [s for s in series if s["sops"]], _reports(series), texts,
                             prev_uid, next_uid,
                             f"{i + 1} / {len(order)}" if i >= 0 else "", nonce,
                             bool(request.query.get("thanks")),
                             str(conf(api)["phone_viewer_url"])),
                 headers={"Content-Security-Policy": csp})


@requires("read", audit="study-read")
async def document(request: web.Request) -> web.Response:
    """A report PDF (Encapsulated PDF of the study; SEC-3 hierarchy checked)."""
    import io as _io

    from pydicom import dcmread

    link = await _allowed(request)
    if isinstance(link, web.Response):
        return link
    api = api_of(request)
    mi = request.match_info
    try:
        row = await api.instance(mi["study"], mi["series"], mi["sop"])
    except errors.NotFound:
        raise errors.Forbidden("not part of this share") from None
    if row.sop_class_uid != ENCAPSULATED_PDF:
        raise errors.Forbidden("not part of this share")
    ds = dcmread(_io.BytesIO(await api.read_instance(row)))
    pdf = bytes(ds.EncapsulatedDocument)
    if ds.get("EncapsulatedDocumentLength"):
        pdf = pdf[:int(ds.EncapsulatedDocumentLength)]
    note_audit(request, object_count=1, link=link.id)
    return web.Response(body=pdf, content_type="application/pdf",
                        headers={"Cache-Control": "private, no-store",
                                 "Content-Disposition": "inline; filename=report.pdf",
                                 "X-Content-Type-Options": "nosniff"})


@requires("read", audit="study-read")
async def series_view(request: web.Request) -> web.Response:
    link = await _allowed(request)
    if isinstance(link, web.Response):
        return link
    api = api_of(request)
    uid, series_uid = request.match_info["study"], request.match_info["series"]
    match = [s for s in await _series(api, uid) if s["uid"] == series_uid]
    if not match or not match[0]["sops"]:
        raise errors.NotFound("no images in this series")
    sops = match[0]["sops"]
    try:
        index = min(max(int(request.query.get("i", "0")), 0), len(sops) - 1)
    except ValueError:
        index = 0
    if request.query.get("sop") in sops:
        index = sops.index(request.query["sop"])
    found = await api.search("study", {"StudyInstanceUID": uid})
    title = _v(found[0], "00081030") if found else ""
    series = match[0]
    sub = " · ".join(x for x in (series["modality"], series["description"],
                                 f"#{series['number']}" if series["number"] else "") if x)
    grid = None
    if series["efilm"]:  # R-C4: double tap zooms to a tile of the film's layout
        grid = _film_grid(await api.metadata(uid, series_uid, sops[index]))
    note_audit(request, link=link.id)
    nonce = secrets.token_urlsafe(16)  # the page's one script (swipe), nothing else runs
    csp = SECURITY_HEADERS["Content-Security-Policy"] + f"; script-src 'nonce-{nonce}'"
    return _html(pages.viewer(uid, series_uid, title, sops, index, sub, nonce,
                              efilm=series["efilm"], grid=grid),
                 headers={"Content-Security-Policy": csp})


def _film_grid(metadata: list[dict]) -> tuple[int, int] | None:
    """(columns, rows) of an e-film's Image Display Format (2010,0010), e.g.
    ``STANDARD\\4,5``; None when absent or not STANDARD."""
    fmt = _v(metadata[0], "20100010") if metadata else ""
    kind, _, size = fmt.partition("\\")
    try:
        cols, rows = (int(x) for x in size.split(","))
    except ValueError:
        return None
    return (cols, rows) if kind == "STANDARD" and 0 < cols <= 10 and 0 < rows <= 10 else None


@requires("read", audit="study-read")
async def image(request: web.Request) -> web.Response:
    """A thumbnail or rendered PNG through the one retrieve path; the series and the
    instance must belong to the study in the URL (SEC-3)."""
    link = await _allowed(request)
    if isinstance(link, web.Response):
        return link
    api = api_of(request)
    mi = request.match_info
    try:
        row = await api.instance(mi["study"], mi["series"], mi["sop"])
    except errors.NotFound:
        raise errors.Forbidden("not part of this share") from None
    if request.path.endswith("/thumbnail"):
        body, ctype = await api.thumbnail(row, 256), "image/jpeg"
    else:
        body = await api.rendered(row, 1, media_type="image/jpeg", quality=88)
        ctype = "image/jpeg"
    note_audit(request, object_count=1, link=link.id)
    return web.Response(body=body, content_type=ctype,
                        headers={"Cache-Control": "private, no-store",
                                 "X-Content-Type-Options": "nosniff"})


# --- the phone image view's DICOMweb (R-C4, R-D1) ----------------------------------------

DICOMWEB = PREFIX + "/dicom-web"


async def _viewer_scope(request: web.Request) -> None:
    """The phone viewer's reads: a verified session, the study in its link and the
    service on (R-C9); otherwise 404 — as DICOMweb answers for a study it does not have,
    so nothing tells whether it exists (SEC-1, SEC-9). Denials are audited."""
    sess = request.get("share.session")
    if sess is None or not current_actor(request).id.startswith("share:"):
        raise _reopen()
    study = request.match_info["study"]
    link = sess.link
    reason = None
    if study not in link.studies:
        reason = "out-of-scope"
    elif not await _enabled_studies(api_of(request), link, [study]):
        reason = "service-off"
    if reason:
        _audit(request, "denied", "denied", link.id, reason=reason,
               route=request.match_info.route.resource.canonical)
        raise errors.NotFound("no such study")


@requires("read", audit="study-read")
async def viewer_metadata(request: web.Request) -> web.StreamResponse:
    """WADO-RS series metadata for the phone viewer, scoped to the share link."""
    await _viewer_scope(request)
    return await retrieve_metadata(request)


@requires("read", audit="study-read")
async def viewer_frames(request: web.Request) -> web.StreamResponse:
    """WADO-RS frames for the phone viewer, scoped to the share link."""
    await _viewer_scope(request)
    return await retrieve_frames(request)


# --- the staff side: create, list, revoke -------------------------------------------------

def link_url(api, token: str, base: str) -> str:
    c = conf(api)
    service = (c["token_service_url"] or api.settings.server.public_url or base).rstrip("/")
    landing = f"{service}{PREFIX}/s/{token}"
    viewer = c["viewer_url"]
    if not viewer:
        return landing
    return viewer.replace("{token}", token) if "{token}" in viewer else viewer + token


def qr_codes(api, url: str) -> dict:
    import segno

    c = conf(api)
    qr = segno.make(url, error=str(c["qr_error"]), micro=False)
    png, svg = io.BytesIO(), io.BytesIO()
    qr.save(png, kind="png", scale=int(c["qr_scale"]), border=4)
    qr.save(svg, kind="svg", scale=4, border=4, xmldecl=False)
    return {"qr_png_base64": base64.b64encode(png.getvalue()).decode(),
            "qr_svg": svg.getvalue().decode()}


async def make_link(api, body: dict, created_by: str) -> tuple[str, L.Link]:
    """Validate a share request and create the link (also used by ``pacsd share``)."""
    kind = body.get("kind", "exam")
    factor = body.get("factor", "birthdate")
    studies = body.get("studies") or []
    hidden = body.get("hide") or []
    if kind not in ("exam", "patient") or factor not in L.FACTORS:
        raise errors.BadRequest("kind is exam or patient; factor is birthdate or phone")
    if not isinstance(studies, list) or not all(isinstance(s, str) for s in studies) \
            or not isinstance(hidden, list) or not studies:
        raise errors.BadRequest("studies is a non-empty list of StudyInstanceUIDs")
    found = []
    for uid in studies:
        hit = await api.search("study", {"StudyInstanceUID": uid, "includefield": "all"})
        if not hit:
            raise errors.BadRequest("no such study")
        found.append(hit[0])
    patients = {_v(s, "00100020") for s in found}
    if len(patients) != 1:
        raise errors.BadRequest("the studies of one share belong to one patient")
    patient = patients.pop()
    if kind == "patient":
        allp = await api.search("study", {"PatientID": patient})
        studies = [_v(s, "0020000D") for s in allp if _v(s, "0020000D") not in hidden]
    if factor == "birthdate":
        answer = _v(found[0], "00100030")
        if not answer:
            raise errors.BadRequest("the patient has no birth date: use factor phone")
    else:
        answer = L.normalise_factor("phone", str(body.get("phone", "")))
        if len(answer) != 4:
            raise errors.BadRequest("factor phone needs the patient's phone number")
    focus = None
    if body.get("series") or body.get("sop"):
        # R-C5: a doctor shares the image being viewed; the link opens on it.
        if kind != "exam" or len(studies) != 1:
            raise errors.BadRequest("an image share names one study, its series and sop")
        try:
            await api.instance(studies[0], str(body.get("series")), str(body.get("sop")))
        except errors.NotFound:
            raise errors.BadRequest("no such image in that study") from None
        focus = {"series": str(body["series"]), "sop": str(body["sop"])}
    try:
        days = float(body.get("days", conf(api)["link_ttl_days"]))
    except (TypeError, ValueError):
        raise errors.BadRequest("days is a number") from None
    if not 0 < days <= 3660:
        raise errors.BadRequest("days is more than 0 and at most 3660")
    return await api.run(api.write, lambda c: L.create_link(
        c, kind=kind, patient_id=patient or None, studies=studies, hidden=list(hidden),
        factor_kind=factor, factor_value=answer, created_by=created_by,
        ttl_s=days * 86400, focus=focus))


def _json(body, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status,
                        content_type="application/json", headers={"Cache-Control": "no-store"})


@requires("read", audit="share.created")
async def create(request: web.Request) -> web.Response:
    """POST /api/v1/plugins/share/links: the URL (shown once) and its QR code."""
    api = api_of(request)
    body = await json_object(request)
    token, link = await make_link(api, body, current_actor(request).id)
    url = link_url(api, token, f"{request.scheme}://{request.host}")
    note_audit(request, studies={s: 0 for s in link.studies}, link=link.id,
               kind=link.kind, expires_at=link.expires_at)
    return _json({**link.public(), "url": url, **qr_codes(api, url)}, status=201)


@requires("read", audit="query")
async def list_(request: web.Request) -> web.Response:
    api = api_of(request)
    study_uid = request.query.get("study")
    rows = await api.run(api.read, lambda c: L.list_links(c, study_uid))
    note_audit(request, results=len(rows))
    return _json({"links": [lk.public() for lk in rows]})


@requires("read", audit="share.revoked")
async def revoke(request: web.Request) -> web.Response:
    api = api_of(request)
    try:
        pk = int(request.match_info["id"])
    except ValueError:
        raise errors.NotFound("no such link") from None
    done = await api.run(api.write, lambda c: L.revoke(c, pk))
    _forget(api)
    if not done:
        raise errors.NotFound("no such link, or revoked already")
    note_audit(request, link=pk)
    return web.Response(status=204)


@hookimpl
def register_routes(router, settings):
    router.add_get(PREFIX + "/s/{token}", landing)
    router.add_get(PREFIX + "/", home)
    router.add_post(PREFIX + "/verify", verify)
    router.add_get(PREFIX + "/exams", exams)
    router.add_get(PREFIX + "/exams/{study}", study)
    router.add_get(PREFIX + "/exams/{study}/series/{series}", series_view)
    router.add_get(PREFIX + "/img/{study}/{series}/{sop}/thumbnail", image)
    router.add_get(PREFIX + "/img/{study}/{series}/{sop}/rendered", image)
    router.add_get(PREFIX + "/doc/{study}/{series}/{sop}/report.pdf", document)
    se = DICOMWEB + "/studies/{study}/series/{series}"
    router.add_get(se + "/metadata", viewer_metadata)
    router.add_get(se + "/instances/{instance}/frames/{frames}", viewer_frames)
    router.add_post(API + "/links", create)
    router.add_get(API + "/links", list_)
    router.add_delete(API + "/links/{id}", revoke)
    from . import care, enrol, service
    enrol.add_routes(router)
    service.add_routes(router)
    care.add_routes(router)


@hookimpl
def register_commands(subparsers):
    from .cli import add_parser
    add_parser(subparsers)


@hookimpl
def plugin_event(api, event, payload):
    """A final report with the patient's phone (pacsd-reports) gets an exam link with the
    phone as second factor; ``share.link-created`` hands it to a notification plugin."""
    if event == "reports.final" and payload.get("phone"):
        return _link_for_report(api, payload)
    return None


async def _link_for_report(api, payload: dict) -> None:
    study, phone = payload["study_uid"], payload["phone"]
    from . import enrol
    from .service import study_enabled
    found = await api.search("study", {"StudyInstanceUID": study})
    patient = _v(found[0], "00100020") if found else ""
    if patient:   # the phone registered for self-enrolment (R-C3), stored hashed
        await api.run(api.write, lambda c: enrol.register(c, patient, phone=phone,
                                                          source="report"))
    if not await study_enabled(api, study, patient or None):
        api.audit("share.not-notified", outcome="denied", study_uid=study,
                  detail={"reason": "service-off", "via": "reports.final"})
        return    # R-C9: the service is off: no link, no SMS
    token, link = await make_link(api, {"studies": [study], "factor": "phone",
                                        "phone": phone}, "reports.final")
    url = link_url(api, token, f"http://{api.settings.server.http}")
    api.audit("share.created", study_uid=study,
              detail={"link": link.id, "via": "reports.final", "kind": link.kind})
    await api.emit("share.link-created", url=url, link_id=link.id, study_uid=study,
                   notify_to=phone, purpose="report-final")
