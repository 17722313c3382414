"""The patient's report in plain language (R-C7) and the feedback form (R-C8).

Report text comes from pacsd-reports through the plugin event ``reports.lookup`` (DICOM
SR reports carry text; PDF reports are shown as PDF). Words of the local knowledge base
``knowledge.json`` (a small curated zh-CN / English list shipped with the plugin; replace
it with ``[plugins.share] knowledge = "/path/file.json"``) found in the text become
tappable terms that jump to their explanation below the report. No network, no AI: the
same words always get the same explanation.
"""
from __future__ import annotations

import json
import re
from html import escape
from importlib import resources

from aiohttp import web

from pacsd.plugin_api import api_of, current_actor, errors, note_audit, requires

import pacsd_share as S

from . import pages
from .service import store_feedback


def knowledge(api) -> tuple[dict, re.Pattern | None]:
    """({word (lower case): entry}, one pattern matching any word, longest first)."""
    state = api.plugin_state(S.NAME)
    if "knowledge" not in state:
        path = S.conf(api).get("knowledge")
        if path:
            with open(str(path), encoding="utf-8") as fh:
                data = json.load(fh)
        else:
            data = json.loads(resources.files("pacsd_share").joinpath("knowledge.json")
                              .read_text(encoding="utf-8"))
        words = {}
        for entry in data.get("terms", []):
            for w in entry.get("match", []):
                words[w.lower()] = entry
        parts = [(rf"\b{re.escape(w)}\b" if w.isascii() else re.escape(w))
                 for w in sorted(words, key=len, reverse=True)]
        state["knowledge"] = (words, re.compile("|".join(parts), re.I) if parts else None)
    return state["knowledge"]


def annotate(api, text: str) -> tuple[str, list[dict]]:
    """(HTML of ``text`` with known words as links to their explanation, the entries
    found in order of first appearance). Everything else is escaped (SEC-24)."""
    words, pattern = knowledge(api)
    if pattern is None:
        return escape(text), []
    out, found, last = [], {}, 0
    for m in pattern.finditer(text):
        entry = words[m.group(0).lower()]
        out.append(escape(text[last:m.start()]))
        out.append(f'<a class="term" href="#kw-{escape(entry["id"])}">'
                   f"{escape(m.group(0))}</a>")
        found.setdefault(entry["id"], entry)
        last = m.end()
    out.append(escape(text[last:]))
    return "".join(out), list(found.values())


async def text_reports(api, study: str) -> list[dict]:
    """The study's current reports that carry text (pacsd-reports, ``reports.lookup``)."""
    into: list = []
    await api.emit("reports.lookup", study_uid=study, into=into)
    return [r for r in into if isinstance(r, dict) and r.get("text")]


@requires("read", audit="study-read")
async def report(request: web.Request) -> web.Response:
    """GET /plugins/share/exams/{study}/reports/{id}: the report's text with explanations."""
    link = await S._allowed(request)
    if isinstance(link, web.Response):
        return link
    api = api_of(request)
    study = request.match_info["study"]
    match = [r for r in await text_reports(api, study)
             if str(r.get("id")) == request.match_info["id"]]
    if not match:
        raise errors.NotFound("no such report")
    r = match[0]
    html, entries = annotate(api, r["text"])
    note_audit(request, link=link.id, report=r["id"], terms=len(entries))
    return S._html(pages.report_text(study, r["status"], html, entries))


@requires("read", audit="share.feedback")
async def feedback(request: web.Request) -> web.Response:
    """POST /plugins/share/feedback: the patient's rating and words (R-C8)."""
    link = await S._allowed(request)
    if isinstance(link, web.Response):
        return link
    if not S._same_origin(request):
        raise errors.Forbidden("cross-site request refused")
    api = api_of(request)
    form = await request.post()
    text = str(form.get("text", "")).strip()
    study = str(form.get("study", "")) or None
    try:
        rating = int(str(form.get("rating", "") or 0)) or None
    except ValueError:
        rating = None
    if not text or len(text) > 2000 or (rating is not None and not 1 <= rating <= 5):
        raise errors.BadRequest("feedback: 1 to 2000 characters, rating 1 to 5")
    if study is not None and study not in link.studies:
        raise errors.Forbidden("not part of this share")
    pk = await store_feedback(api, link.id, study, rating, text)
    # the words themselves are stored, not audited (they may hold personal details)
    note_audit(request, link=link.id, feedback=pk, rating=rating,
               actor_kind=current_actor(request).id.split(":")[0])
    back = (f"{S.PREFIX}/exams/{pages._q(study)}" if study else f"{S.PREFIX}/exams")
    raise web.HTTPSeeOther(back + "?thanks=1", headers=S.SECURITY_HEADERS)


def add_routes(router) -> None:
    router.add_get(S.PREFIX + "/exams/{study}/reports/{id}", report)
    router.add_post(S.PREFIX + "/feedback", feedback)
