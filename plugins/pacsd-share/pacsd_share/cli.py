"""``pacsd share create|list|revoke``: share links from the command line (R-C3, R-E5)."""
from __future__ import annotations

import argparse
import asyncio
import base64
import json


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("share", help="patient share links and QR codes")
    sub = p.add_subparsers(dest="share_command", required=True)
    c = sub.add_parser("create", help="create a link; prints the URL (shown once)")
    c.add_argument("--study", action="append", required=True, help="StudyInstanceUID")
    c.add_argument("--patient-space", action="store_true",
                   help="all studies of the patient (new ones too), minus --hide")
    c.add_argument("--hide", action="append", default=[], help="StudyInstanceUID to hide")
    c.add_argument("--factor", choices=("birthdate", "phone"), default="birthdate")
    c.add_argument("--phone", default="", help="phone number for --factor phone")
    c.add_argument("--days", type=float, help="lifetime in days")
    c.add_argument("--base-url", default="http://127.0.0.1:8042",
                   help="base URL when neither token_service_url nor public_url is set")
    c.add_argument("--qr-png", help="write the QR code PNG here")
    c.add_argument("--qr-svg", help="write the QR code SVG here")
    r = sub.add_parser("revoke", help="revoke a link")
    r.add_argument("id", type=int)
    ls = sub.add_parser("list", help="list links (no tokens)")
    ls.add_argument("--study")
    for q in (c, r, ls):
        q.add_argument("--config", help="TOML settings file")
        q.add_argument("--data-dir", help="data directory")
    p.set_defaults(pacsd_command=run)


def run(args: argparse.Namespace, settings) -> int:
    return asyncio.run(_run(args, settings))


async def _run(args, settings) -> int:
    from pacsd.plugin_api import open_api

    from . import links as L
    from . import link_url, make_link, qr_codes

    async with open_api(settings) as api:
        if args.share_command == "create":
            body = {"kind": "patient" if args.patient_space else "exam",
                    "studies": args.study, "hide": args.hide, "factor": args.factor,
                    "phone": args.phone}
            if args.days is not None:
                body["days"] = args.days
            token, link = await make_link(api, body, "local")
            url = link_url(api, token, args.base_url)
            api.audit("share.created", detail={"link": link.id, "via": "cli"})
            qr = qr_codes(api, url)
            if args.qr_png:
                with open(args.qr_png, "wb") as fh:
                    fh.write(base64.b64decode(qr["qr_png_base64"]))
            if args.qr_svg:
                with open(args.qr_svg, "w") as fh:
                    fh.write(qr["qr_svg"])
            print(json.dumps({"id": link.id, "url": url, "expires_at": link.expires_at}))
        elif args.share_command == "revoke":
            ok = await api.run(api.write, lambda c: L.revoke(c, args.id))
            api.audit("share.revoked", detail={"link": args.id, "via": "cli"})
            print("revoked" if ok else "no such link, or revoked already")
            return 0 if ok else 1
        else:
            rows = await api.run(api.read, lambda c: L.list_links(c, args.study))
            print(json.dumps([lk.public() for lk in rows], indent=2))
    return 0
