"""Self-enrolment (R-C3): a patient reaches their space with card number + phone + an SMS
code, without a link from the hospital.

**Matching rule** (documented in the plugin README): the card number is looked up

1. in the plugin's registry ``share_cards`` (card number → PatientID, filled by the HIS
   with ``PUT /api/v1/plugins/share/patients/{PatientID}``; cards stored as SHA-256),
2. else as a PatientID of a stored study (the hospital card number *is* the PatientID
   in many hospitals).

The phone must equal the patient's registered phone in ``share_patients`` (a salted
scrypt hash; registered by the HIS through the same API, or taken from a final report
uploaded with ``?phone=``). Only then, and only while the digital service is on for the
patient (R-C9), a 6-digit code goes out through the SMS channel (plugin event
``share.code-created``, sent by pacsd-notify). The answer to the patient is the same
whether or not anything matched (no enumeration of cards or phones).

The code is stored as a salted scrypt hash, lives ``enrol_code_ttl_s``, allows
``enrol_max_attempts`` answers and is used once; code requests are limited per address
and per phone (429). A correct code opens a verified patient-space session (the same
cookie as a share link). Every request and answer is audited (``share.enrol-requested``,
``share.enrol-verified``, ``share.enrol-denied``), without card or phone numbers.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

import sqlalchemy as sa
from aiohttp import web

from pacsd.plugin_api import RateLimiter, api_of, client_ip, errors, json_object, public, \
    note_audit, requires

import pacsd_share as S

from . import links as L
from . import pages

ENROL_COOKIE = "pacsd_enrol"


# --- blocking functions of a connection ---------------------------------------------------

def normalise_card(card: str) -> str:
    return re.sub(r"\s", "", card or "").upper()[:64]


def normalise_phone(phone: str) -> str:
    return re.sub(r"\D", "", phone or "")[-11:]


def _slow_hash(salt: str, value: str) -> str:
    """scrypt (2^14): a 6-digit code or a phone number cannot be read back from a copy of
    the database in the minutes it matters."""
    return hashlib.scrypt(value.encode(), salt=salt.encode(), n=2 ** 14, r=8, p=1,
                          dklen=32).hex()


def _card_digest(card: str) -> str:
    return hashlib.sha256(("card:" + normalise_card(card)).encode()).hexdigest()


def register(conn, patient_id: str, *, phone: str | None = None, cards=(),
             source: str = "registry", now: float | None = None) -> None:
    """Record the patient's phone (hashed) and card numbers (hashed)."""
    now = time.time() if now is None else now
    if phone:
        salt = secrets.token_hex(16)
        conn.execute(sa.delete(L.patients).where(L.patients.c.patient_id == patient_id))
        conn.execute(sa.insert(L.patients).values(
            patient_id=patient_id, phone_salt=salt,
            phone_sha256=_slow_hash(salt, normalise_phone(phone)), source=source,
            updated_at=now))
    for card in cards:
        digest = _card_digest(card)
        conn.execute(sa.delete(L.cards).where(L.cards.c.card_sha256 == digest))
        conn.execute(sa.insert(L.cards).values(card_sha256=digest, patient_id=patient_id,
                                               updated_at=now))


def patient_of_card(conn, card: str) -> str | None:
    return conn.execute(sa.select(L.cards.c.patient_id).where(
        L.cards.c.card_sha256 == _card_digest(card))).scalar()


def phone_matches(conn, patient_id: str, phone: str) -> bool:
    row = conn.execute(sa.select(L.patients).where(
        L.patients.c.patient_id == patient_id)).first()
    if row is None or not normalise_phone(phone):
        return False
    return hmac.compare_digest(_slow_hash(row.phone_salt, normalise_phone(phone)),
                               row.phone_sha256)


def new_enrolment(conn, patient_id: str | None, ttl_s: float,
                  now: float | None = None) -> tuple[str, str]:
    """(cookie token, code). Without a patient the code is never sent: answers fail."""
    now = time.time() if now is None else now
    token, salt = L.new_token(), secrets.token_hex(16)
    code = f"{secrets.randbelow(10 ** 6):06d}"
    conn.execute(sa.insert(L.enrolments).values(
        token_sha256=L.digest(token), patient_id=patient_id, code_salt=salt,
        code_sha256=_slow_hash(salt, code), created_at=now, expires_at=now + ttl_s,
        attempts=0))
    return token, code


def check_code(conn, token: str, code: str, max_attempts: int,
               now: float | None = None) -> tuple[str, str | None, int | None]:
    """(``ok`` | ``wrong`` | ``locked`` | ``expired`` | ``unknown``, patient, row id)."""
    now = time.time() if now is None else now
    row = conn.execute(sa.select(L.enrolments).where(
        L.enrolments.c.token_sha256 == L.digest(token))).first()
    if row is None or row.used_at is not None:
        return "unknown", None, None
    if row.attempts >= max_attempts:
        return "locked", None, row.id
    if now >= row.expires_at:
        return "expired", None, row.id
    code = re.sub(r"\D", "", code or "")[:6]
    good = len(code) == 6 and hmac.compare_digest(_slow_hash(row.code_salt, code),
                                                  row.code_sha256)
    if good and row.patient_id:
        conn.execute(sa.update(L.enrolments).where(L.enrolments.c.id == row.id)
                     .values(used_at=now))
        return "ok", row.patient_id, row.id
    attempts = row.attempts + 1
    conn.execute(sa.update(L.enrolments).where(L.enrolments.c.id == row.id)
                 .values(attempts=attempts))
    return ("locked" if attempts >= max_attempts else "wrong"), None, row.id


# --- handlers -----------------------------------------------------------------------------

def _limiters(api) -> tuple[RateLimiter, RateLimiter]:
    state = api.plugin_state(S.NAME)
    if "enrol_ip" not in state:
        c = S.conf(api)
        window = float(c["enrol_rate_window_s"])
        state["enrol_ip"] = api.rate_limiter(f"{S.NAME}.enrol_ip", int(c["enrol_rate_limit"]),
                                             window)
        state["enrol_phone"] = api.rate_limiter(f"{S.NAME}.enrol_phone",
                                                int(c["enrol_phone_limit"]), window)
    return state["enrol_ip"], state["enrol_phone"]


def _limit(request, key: str, limiter: RateLimiter, step: str) -> None:
    wait = limiter.retry_after(key)
    if wait is not None:
        S._audit(request, "enrol-denied", "denied", reason="rate-limited", step=step)
        raise errors.TooManyRequests("too many attempts: try again later", retry_after=wait)
    limiter.failed(key)   # every request counts (SMS costs money, codes are guessable)


@public
async def form(request: web.Request) -> web.Response:
    """GET /plugins/share/enrol: card number + phone."""
    return S._html(pages.enrol_form(request.query.get("e")))


@public
async def request_code(request: web.Request) -> web.Response:
    """POST /plugins/share/enrol: send a code if card and phone match (same answer if not)."""
    api = api_of(request)
    if not S._same_origin(request):
        S._audit(request, "enrol-denied", "denied", reason="cross-origin", step="request")
        raise errors.Forbidden("cross-site request refused")
    by_ip, by_phone = _limiters(api)
    _limit(request, client_ip(request), by_ip, "request")
    data = await request.post()
    card = normalise_card(str(data.get("card", "")))
    phone = normalise_phone(str(data.get("phone", "")))
    if not card or len(phone) < 7:
        S._audit(request, "enrol-denied", "denied", reason="malformed", step="request")
        return S._html(pages.enrol_form("format"), status=400)
    _limit(request, "phone:" + hashlib.sha256(phone.encode()).hexdigest(), by_phone,
           "request")
    c = S.conf(api)

    def match(conn):
        pid = patient_of_card(conn, card)
        return pid, (phone_matches(conn, pid, phone) if pid else False)
    pid, ok = await api.run(api.read, match)
    if pid is None:   # rule 2: the card number is a PatientID of a stored study
        if await api.search("study", {"PatientID": card, "limit": "1"}):
            pid = card
            ok = await api.run(api.read, lambda conn: phone_matches(conn, pid, phone))
    reason = "sent" if ok else ("no-match")
    if ok and not await S.service_enabled(api, patient_id=pid):
        ok, reason = False, "service-off"
    ttl = float(c["enrol_code_ttl_s"])
    token, code = await api.run(api.write, lambda conn: new_enrolment(
        conn, pid if ok else None, ttl))
    if ok:
        await api.emit("share.code-created", notify_to=phone, code=code,
                       minutes=max(1, int(ttl // 60)), purpose="enrol-code")
    S._audit(request, "enrol-requested", "success" if ok else "denied", reason=reason)
    resp = web.HTTPSeeOther(S.PREFIX + "/enrol/code", headers=S.SECURITY_HEADERS)
    resp.set_cookie(ENROL_COOKIE, token, max_age=int(ttl) + 600, path=S.PREFIX + "/",
                    httponly=True, samesite="Lax", secure=S._is_tls(request))
    raise resp


@public
async def code_form(request: web.Request) -> web.Response:
    """GET /plugins/share/enrol/code: the code the SMS brought."""
    if not request.cookies.get(ENROL_COOKIE):
        raise web.HTTPSeeOther(S.PREFIX + "/enrol", headers=S.SECURITY_HEADERS)
    return S._html(pages.code_form(bool(request.query.get("e"))))


_ENDS = {"locked": ("错误次数过多，请重新获取验证码", "Too many wrong codes: ask for a new one."),
         "expired": ("验证码已过期，请重新获取", "The code has expired: ask for a new one."),
         "unknown": ("请重新获取验证码", "Please ask for a new code.")}


@public
async def check(request: web.Request) -> web.Response:
    """POST /plugins/share/enrol/code: a right code opens the patient's space."""
    api = api_of(request)
    if not S._same_origin(request):
        S._audit(request, "enrol-denied", "denied", reason="cross-origin", step="code")
        raise errors.Forbidden("cross-site request refused")
    by_ip, _ = _limiters(api)
    token = request.cookies.get(ENROL_COOKIE, "")
    data = await request.post()
    c = S.conf(api)
    result, pid, eid = await api.run(api.write, lambda conn: check_code(
        conn, token, str(data.get("code", "")), int(c["enrol_max_attempts"])))
    if result != "ok":
        if result != "wrong":
            _limit(request, client_ip(request), by_ip, "code")
        S._audit(request, "enrol-denied", "denied", reason=f"code-{result}", step="code",
                 enrolment=eid)
        if result == "wrong":
            raise web.HTTPSeeOther(S.PREFIX + "/enrol/code?e=1", headers=S.SECURITY_HEADERS)
        zh, en = _ENDS[result]
        return S._html(pages.message("无法验证", "Cannot verify", zh, en)
                       .replace("</main>", f'<p><a href="{S.PREFIX}/enrol">重新获取 · '
                                           f"Start again</a></p></main>"), status=401,
                       headers={"WWW-Authenticate":  # RFC 9110: a 401 names its scheme
                                'Bearer realm="pacsd-share", error="invalid_token"'})
    studies = [S._v(s, "0020000D") for s in await api.search("study", {"PatientID": pid})]
    ttl = float(c["session_ttl_s"])

    def open_space(conn):
        _, link = L.create_link(conn, kind="patient", patient_id=pid, studies=studies,
                                hidden=[], factor_kind="phone",
                                factor_value=secrets.token_hex(8), created_by="enrol",
                                ttl_s=ttl)
        session = L.open_session(conn, link.id, ttl)
        sess = L.session_by_token(conn, session)
        L.mark_verified(conn, sess.id)
        return link, session
    link, session = await api.run(api.write, open_space)
    S._audit(request, "enrol-verified", link=link.id, enrolment=eid)
    resp = web.HTTPSeeOther(S.PREFIX + "/exams", headers=S.SECURITY_HEADERS)
    resp.set_cookie(S.COOKIE, session, max_age=int(ttl), path=S.PREFIX + "/",
                    httponly=True, samesite="Lax", secure=S._is_tls(request))
    resp.del_cookie(ENROL_COOKIE, path=S.PREFIX + "/")
    raise resp


@requires("write", audit="share.registered")
async def put_patient(request: web.Request) -> web.Response:
    """PUT /api/v1/plugins/share/patients/{patient}: the HIS registers the patient's phone
    and hospital card numbers for self-enrolment (stored hashed)."""
    api = api_of(request)
    pid = request.match_info["patient"][:64]
    body = await json_object(request, "{phone, cards}")
    phone = normalise_phone(str(body.get("phone") or ""))
    cards = body.get("cards") or []
    if (body.get("phone") and len(phone) < 7) or not isinstance(cards, list) \
            or not all(isinstance(x, str) and normalise_card(x) for x in cards):
        raise errors.BadRequest("phone has at least 7 digits; cards is a list of strings")
    if not phone and not cards:
        raise errors.BadRequest("give phone and/or cards")
    await api.run(api.write, lambda conn: register(conn, pid, phone=phone or None,
                                                   cards=cards))
    note_audit(request, cards=len(cards), phone=bool(phone))
    return web.Response(status=204)


def add_routes(router) -> None:
    router.add_get(S.PREFIX + "/enrol", form)
    router.add_post(S.PREFIX + "/enrol", request_code)
    router.add_get(S.PREFIX + "/enrol/code", code_form)
    router.add_post(S.PREFIX + "/enrol/code", check)
    router.add_put(S.API + "/patients/{patient}", put_patient)
