"""The patient's phone pages (R-C4 first slice, R-C3): mobile-first, server-rendered HTML,
Chinese first with English, no JavaScript. Every DICOM text is escaped (SEC-24)."""
from __future__ import annotations

from html import escape
from urllib.parse import quote

PREFIX = "/plugins/share"

_CSS = """
*{box-sizing:border-box}body{margin:0;font:16px/1.45 -apple-system,"PingFang SC",
"Microsoft YaHei","Noto Sans CJK SC",sans-serif;background:#0f1419;color:#e8eaed}
header{position:sticky;top:0;background:#16202b;padding:14px 16px;border-bottom:1px solid
#26323f;display:flex;align-items:center;gap:12px}header a{color:#8ab4f8;text-decoration:none;
font-size:15px}h1{font-size:19px;margin:0;font-weight:600}main{padding:14px 16px 40px}
.en{color:#9aa4ae;font-size:13px;font-weight:400}.card{display:block;background:#1b2733;
border-radius:12px;padding:14px 16px;margin:0 0 12px;color:inherit;text-decoration:none;
border:1px solid #26323f}.card .row{display:flex;justify-content:space-between;gap:8px}
.mod{background:#2b5278;color:#cfe3ff;border-radius:6px;padding:1px 8px;font-size:13px;
font-weight:600}.muted{color:#9aa4ae;font-size:14px}.grid{display:grid;
grid-template-columns:1fr 1fr;gap:10px}.tile{background:#000;border-radius:10px;
overflow:hidden;color:inherit;text-decoration:none;border:1px solid #26323f}.tile img{
width:100%;aspect-ratio:1;object-fit:contain;display:block;background:#000}.tile div{
padding:6px 8px;font-size:13px}form{background:#1b2733;border-radius:12px;padding:18px 16px;
border:1px solid #26323f}label{display:block;margin:0 0 8px}input{width:100%;font-size:20px;
padding:12px;border-radius:8px;border:1px solid #3c4a58;background:#0f1419;color:#fff;
letter-spacing:2px}button{margin-top:14px;width:100%;font-size:18px;padding:13px;
border:0;border-radius:8px;background:#1a73e8;color:#fff;font-weight:600}.err{
background:#5c1f1f;color:#ffd7d7;border-radius:8px;padding:10px 12px;margin:0 0 12px}
.view{background:#000;margin:0 -16px;display:flex;justify-content:center}.view img{
width:100%;height:auto;max-height:68vh;object-fit:contain;display:block}.nav{display:flex;justify-content:space-between;
align-items:center;margin-top:12px}.nav a,.nav span.off{display:inline-block;padding:10px 18px;
border-radius:8px;background:#1b2733;color:#8ab4f8;text-decoration:none;border:1px solid
#26323f}.nav span.off{color:#4d5964}.view.film{position:relative;overflow:hidden;
touch-action:none;display:block}.view.film img{width:100%;height:auto;max-height:none;
transform-origin:0 0;will-change:transform;user-select:none;-webkit-user-drag:none}footer{color:#6b7785;font-size:12px;text-align:center;
margin-top:24px}
h2.sec{font-size:16px;margin:18px 0 10px;font-weight:600}
form.search{background:none;border:0;padding:0;margin:0 0 12px}form.search input{
font-size:16px;letter-spacing:0;padding:10px 12px}
.report-text{white-space:pre-wrap;line-height:1.7}a.term{color:#ffd479;text-decoration:
underline dotted;text-underline-offset:3px}.kw{background:#1b2733;border:1px solid #26323f;
border-radius:10px;padding:10px 12px;margin:0 0 10px}.kw:target{border-color:#ffd479;
background:#2a2a1b}.state{border-radius:6px;padding:1px 8px;font-size:13px;font-weight:600}
.final{background:#1e4620;color:#c8f0c8}.preliminary{background:#5a4311;color:#ffe3a3}
.exnav{display:flex;justify-content:space-between;margin:0 0 12px}.exnav a,.exnav span{
font-size:14px;color:#8ab4f8;text-decoration:none}.exnav span{color:#4d5964}
textarea{width:100%;font-size:16px;padding:10px;border-radius:8px;border:1px solid #3c4a58;
background:#0f1419;color:#fff;min-height:90px}select{font-size:16px;padding:8px;
border-radius:8px;background:#0f1419;color:#fff;border:1px solid #3c4a58}.ok{
background:#1e4620;color:#c8f0c8;border-radius:8px;padding:10px 12px;margin:0 0 12px}
"""


def page(title_zh: str, title_en: str, body: str, back: str | None = None) -> str:
    back_link = (f'<a href="{escape(back)}" aria-label="back">‹ 返回</a>' if back else "")
    return (f'<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<meta name="referrer" content="no-referrer">'
            f"<title>{escape(title_zh)} · {escape(title_en)}</title><style>{_CSS}</style>"
            f"</head><body><header>{back_link}<h1>{escape(title_zh)} "
            f'<span class="en">{escape(title_en)}</span></h1></header><main>{body}'
            f"<footer>pacsd · 影像云胶片 Cloud film</footer></main></body></html>")


def message(title_zh: str, title_en: str, text_zh: str, text_en: str) -> str:
    return page(title_zh, title_en,
                f'<div class="card"><p>{escape(text_zh)}</p>'
                f'<p class="muted">{escape(text_en)}</p></div>')


def factor_form(kind: str, error: str | None, attempts_left: int) -> str:
    if kind == "phone":
        q_zh, q_en, ph, mode = ("请输入登记手机号的后四位", "Last four digits of your phone number",
                                "0000", "numeric")
    else:
        q_zh, q_en, ph, mode = ("请输入出生日期", "Your date of birth (YYYYMMDD)",
                                "YYYYMMDD", "numeric")
    err = ""
    if error:
        err = (f'<div class="err" role="alert">{escape(error)}<br>'
               f"剩余 {attempts_left} 次 · {attempts_left} attempts left</div>")
    body = (f'{err}<form method="post" action="{PREFIX}/verify">'
            f'<label for="answer">{escape(q_zh)}<br><span class="en">{escape(q_en)}</span>'
            f'</label><input id="answer" name="answer" inputmode="{mode}" '
            f'autocomplete="off" placeholder="{ph}" required maxlength="16">'
            f'<button type="submit">查看影像 · View images</button></form>'
            f'<p class="muted">为保护您的隐私，首次查看前需要验证身份。<br>'
            f'To protect your privacy, please confirm who you are first.</p>')
    return page("身份验证", "Verify", body)


def _q(s: str) -> str:
    return quote(s, safe="")


def exams(items: list[dict], name: str, q: str = "", thanks: bool = False) -> str:
    search = (f'<form class="search" method="get" action="{PREFIX}/exams">'
              f'<input name="q" value="{escape(q)}" placeholder="搜索 医院/检查/日期 Search" '
              f'aria-label="search"></form>')
    if not items:
        body = ('<div class="card">暂无检查<br><span class="muted">No exams shared</span>'
                "</div>")
    else:
        cards = []
        for it in items:
            cards.append(
                f'<a class="card" href="{PREFIX}/exams/{_q(it["uid"])}">'
                f'<div class="row"><strong>{escape(it["description"] or "检查 Exam")}'
                f'</strong><span class="mod">{escape(it["modalities"] or "—")}</span></div>'
                f'<div class="muted">{escape(" · ".join(x for x in (it["date"], it["institution"]) if x))}</div>'
                f'<div class="muted">{it["series"]} 个序列 series · {it["images"]} 张图像 images'
                f"</div></a>")
        body = "".join(cards)
    who = f'<p class="muted">患者 Patient: {escape(name)}</p>' if name else ""
    ok = ('<div class="ok" role="status">谢谢您的反馈 · Thank you for your feedback</div>'
          if thanks else "")
    return page("我的检查", "My exams", ok + who + search + body + feedback_form())


def _tile(study_uid: str, s: dict, phone_viewer: str = "") -> str:
    """A series tile: the e-film (and, without a phone viewer, the images) open the
    picture view; images open the phone image view (R-C4) when it is configured."""
    thumb = (f'{PREFIX}/img/{_q(study_uid)}/{_q(s["uid"])}/{_q(s["sop"])}/thumbnail'
             if s["sop"] else "")
    href = f"{PREFIX}/exams/{_q(study_uid)}/series/{_q(s['uid'])}"
    if phone_viewer and not s.get("efilm"):
        href = f"{phone_viewer}#/study/{_q(study_uid)}/series/{_q(s['uid'])}"
    return (f'<a class="tile" href="{escape(href)}">'
            f'<img alt="series {escape(str(s["number"]))}" src="{thumb}" loading="lazy">'
            f'<div>{escape(s["modality"])} · {escape(s["description"] or "序列 Series")}'
            f'<br><span class="muted">{s["images"]} 张 images</span></div></a>')


STATES = {"final": ("正式报告", "Final report"),
          "preliminary": ("初步报告", "Preliminary report")}


def feedback_form(study_uid: str | None = None) -> str:
    """R-C8: a short form at the bottom of the patient's pages."""
    hidden = (f'<input type="hidden" name="study" value="{escape(study_uid)}">'
              if study_uid else "")
    options = "".join(f'<option value="{n}">{"★" * n}</option>' for n in range(5, 0, -1))
    return (f'<h2 class="sec">意见反馈 <span class="en">Feedback</span></h2>'
            f'<form id="feedback" method="post" action="{PREFIX}/feedback">{hidden}'
            f'<label for="rating">满意度 <span class="en">Rating</span></label>'
            f'<select id="rating" name="rating"><option value="">—</option>{options}'
            f'</select><label for="fb-text" style="margin-top:12px">您的意见 '
            f'<span class="en">Your comments</span></label><textarea id="fb-text" '
            f'name="text" maxlength="2000" required></textarea>'
            f'<button type="submit">提交 · Send</button></form>')


def report_text(study_uid: str, status: str, html: str, entries: list[dict]) -> str:
    """R-C7: the report's words, known terms tappable, their explanations below."""
    zh, en = STATES.get(status, ("报告", "Report"))
    parts = [f'<p><span class="state {escape(status)}">{zh} · {en}</span></p>',
             f'<div class="card report-text">{html}</div>']
    if entries:
        parts.append('<h2 class="sec">名词解释 <span class="en">What the words mean</span>'
                     '</h2><p class="muted">点击报告中带下划线的词查看解释 · '
                     'Tap an underlined word for its meaning.</p>')
        for e in entries:
            parts.append(f'<div class="kw" id="kw-{escape(e["id"])}"><p>{escape(e["zh"])}'
                         f'</p><p class="muted">{escape(e["en"])}</p></div>')
    parts.append('<p class="muted">解释仅供参考，请以医生的意见为准。<br>'
                 'For information only: your doctor knows your case.</p>')
    return page("检查报告", "Report", "".join(parts), back=f"{PREFIX}/exams/{_q(study_uid)}")


def study(study_uid: str, title: str, date: str, series: list[dict],
          reports: list[dict] | None = None, texts: list[dict] | None = None,
          prev_uid: str | None = None, next_uid: str | None = None,
          position: str = "", nonce: str = "", thanks: bool = False,
          phone_viewer: str = "") -> str:
    """R-C4: report, e-film and images as separate entries; swipe between exams. The
    images open ``phone_viewer`` (viewer-web's phone.html) when given."""
    def ex(uid, label, rel):
        if uid:
            return f'<a data-nav="{rel}" href="{PREFIX}/exams/{_q(uid)}">{label}</a>'
        return f"<span>{label}</span>"
    parts = []
    if thanks:
        parts.append('<div class="ok" role="status">谢谢您的反馈 · Thank you for your '
                     "feedback</div>")
    if prev_uid or next_uid:
        parts.append(f'<div class="exnav">{ex(prev_uid, "‹ 上一个检查", "prev")}'
                     f'<span class="muted">{escape(position)}</span>'
                     f'{ex(next_uid, "下一个检查 ›", "next")}</div>')
    parts.append(f'<p class="muted">{escape(date)}</p>')
    if texts:
        parts.append('<h2 class="sec">报告 <span class="en">Report</span></h2>')
        for t in texts:
            zh, en = STATES.get(t["status"], ("报告", "Report"))
            first = t["text"].splitlines()[1:2] or t["text"].splitlines()[:1]
            parts.append(f'<a class="card report" href="{PREFIX}/exams/{_q(study_uid)}'
                         f'/reports/{t["id"]}"><strong>{zh} <span class="en">{en}</span>'
                         f'</strong><div class="muted">{escape(first[0][:80] if first else "")}'
                         f"</div></a>")
    if reports:
        if not texts:
            parts.append('<h2 class="sec">报告 <span class="en">Report</span></h2>')
        for d in reports:
            href = (f'{PREFIX}/doc/{_q(study_uid)}/{_q(d["series"])}/{_q(d["sop"])}'
                    "/report.pdf")
            parts.append(f'<a class="card report" href="{href}"><strong>'
                         f'{escape(d["title"] or "报告 Report")}</strong>'
                         f'<div class="muted">{escape(d["date"])} · PDF</div></a>')
    films = [s for s in series if s.get("efilm")]
    if films:
        parts.append('<h2 class="sec">电子胶片 <span class="en">E-film</span></h2>'
                     f'<div class="grid">{"".join(_tile(study_uid, s) for s in films)}</div>')
    images = [s for s in series if not s.get("efilm")]
    if images:
        parts.append('<h2 class="sec">影像 <span class="en">Images</span></h2>'
                     '<div class="grid">'
                     f'{"".join(_tile(study_uid, s, phone_viewer) for s in images)}</div>')
    parts.append(feedback_form(study_uid))
    if nonce:  # swipe left / right for the next / previous exam (R-C4)
        parts.append(f'<script nonce="{nonce}">{_SWIPE}</script>')
    return page(title or "检查", "Exam", "".join(parts), back=f"{PREFIX}/exams")


_SWIPE = """(function(){var x=null,y=null;
document.addEventListener('touchstart',function(e){x=e.touches[0].clientX;
y=e.touches[0].clientY;},{passive:true});
document.addEventListener('touchend',function(e){if(x===null)return;
var dx=e.changedTouches[0].clientX-x,dy=e.changedTouches[0].clientY-y;x=null;
if(Math.abs(dx)<50||Math.abs(dx)<Math.abs(dy)*1.5)return;
var a=document.querySelector(dx<0?'a[data-nav=next]':'a[data-nav=prev]');
if(a)location.href=a.href;},{passive:true});})();"""


# R-C4: the e-film sheet zooms without steps (two-finger pinch, wheel), moves with one
# finger when zoomed, and a double tap zooms to the tapped tile (key image) of the film's
# layout (data-cols / data-rows; the header band is found in the sheet's pixels) — or to
# 2.5x around the tap without a layout — and a second double tap returns to the whole sheet.
# A CSS transform driven by pointer events; the state is in data-scale / data-x / data-y.
_EFILM = """(function(){var box=document.getElementById('film'),
img=document.getElementById('image');
var s=1,x=0,y=0,pts={},start=null,lastTap=0,lastXY=null,top=null;
function apply(anim){img.style.transition=anim?'transform .25s ease-out':'none';
img.style.transform='translate('+x+'px,'+y+'px) scale('+s+')';box.dataset.scale=s.toFixed(3);
box.dataset.x=x.toFixed(1);box.dataset.y=y.toFixed(1);}
function clamp(){var W=box.clientWidth,H=box.clientHeight;if(s<=1){s=1;x=0;y=0;return;}
s=Math.min(s,12);x=Math.min(0,Math.max(W-W*s,x));y=Math.min(0,Math.max(H-H*s,y));}
function local(e){var r=box.getBoundingClientRect();return [e.clientX-r.left,e.clientY-r.top];}
function headerTop(){if(top!==null)return top;top=0;try{var c=document.createElement('canvas');
c.width=4;c.height=img.naturalHeight;var g=c.getContext('2d');g.drawImage(img,-2,0);
var d=g.getImageData(0,0,1,c.height).data;if(d[0]>8){for(var k=0;k<c.height;k++){
if(d[k*4]<8){top=k/c.height;break;}}}}catch(err){top=0;}return top;}
function zoomTo(px,py){var W=box.clientWidth,H=box.clientHeight,cols=+box.dataset.cols||0,
rows=+box.dataset.rows||0;if(cols&&rows){var t=headerTop()*H,cw=W/cols,ch=(H-t)/rows,
c=Math.min(cols-1,Math.max(0,Math.floor(px/cw))),r=Math.min(rows-1,Math.max(0,
Math.floor((py-t)/ch)));s=Math.min(W/cw,H/ch);x=W/2-s*(c*cw+cw/2);y=H/2-s*(t+r*ch+ch/2);
box.dataset.tile=r+','+c;}else{s=2.5;x=W/2-s*px;y=H/2-s*py;}clamp();apply(true);}
function dist(a,b){return Math.hypot(a[0]-b[0],a[1]-b[1]);}
box.addEventListener('pointerdown',function(e){box.setPointerCapture(e.pointerId);
pts[e.pointerId]=local(e);var ids=Object.keys(pts);if(ids.length===2){var a=pts[ids[0]],
b=pts[ids[1]];start={d:dist(a,b),s:s,x:x,y:y,m:[(a[0]+b[0])/2,(a[1]+b[1])/2]};}
else if(ids.length===1){start={p:pts[e.pointerId],x:x,y:y,t:Date.now(),moved:false};}});
box.addEventListener('pointermove',function(e){if(!(e.pointerId in pts))return;
pts[e.pointerId]=local(e);var ids=Object.keys(pts);if(ids.length===2&&start&&start.d){
var a=pts[ids[0]],b=pts[ids[1]],m=[(a[0]+b[0])/2,(a[1]+b[1])/2];
var ns=Math.max(1,Math.min(12,start.s*dist(a,b)/start.d));
x=m[0]-(start.m[0]-start.x)*ns/start.s;y=m[1]-(start.m[1]-start.y)*ns/start.s;s=ns;
clamp();apply(false);}else if(ids.length===1&&start&&start.p){var p=pts[e.pointerId];
if(dist(p,start.p)>10)start.moved=true;if(s>1){x=start.x+p[0]-start.p[0];
y=start.y+p[1]-start.p[1];clamp();apply(false);}}});
function up(e){if(!(e.pointerId in pts))return;var p=pts[e.pointerId];delete pts[e.pointerId];
var n=Object.keys(pts).length;if(n===0&&start&&start.p&&!start.moved&&Date.now()-start.t<350){
var now=Date.now();if(now-lastTap<400&&lastXY&&dist(p,lastXY)<40){lastTap=0;
if(s>1.01){s=1;x=0;y=0;apply(true);delete box.dataset.tile;}else zoomTo(p[0],p[1]);}
else{lastTap=now;lastXY=p;}}if(n<2)start=n===1?{p:pts[Object.keys(pts)[0]],x:x,y:y,
t:0,moved:true}:null;}
box.addEventListener('pointerup',up);box.addEventListener('pointercancel',up);
box.addEventListener('wheel',function(e){e.preventDefault();var p=local(e),
ns=Math.max(1,Math.min(12,s*Math.exp(-e.deltaY/300)));x=p[0]-(p[0]-x)*ns/s;
y=p[1]-(p[1]-y)*ns/s;s=ns;clamp();apply(false);},{passive:false});
apply(false);})();"""


def viewer(study_uid: str, series_uid: str, title: str, sops: list[str], index: int,
           subtitle: str = "", nonce: str = "", efilm: bool = False,
           grid: tuple[int, int] | None = None) -> str:
    """The picture view of a series (server-rendered images): the e-film page (pinch
    zoom, double tap to a tile) and the images' fallback where the phone image view cannot
    run (no WebGL)."""
    n = len(sops)
    base = f"{PREFIX}/exams/{_q(study_uid)}/series/{_q(series_uid)}"
    img = (f'{PREFIX}/img/{_q(study_uid)}/{_q(series_uid)}/{_q(sops[index])}/rendered')

    def nav(i: int, label: str, rel: str) -> str:
        if 0 <= i < n:
            return f'<a data-nav="{rel}" href="{base}?i={i}">{label}</a>'
        return f'<span class="off">{label}</span>'
    sub = f'<p class="muted">{escape(subtitle)}</p>' if subtitle else ""
    if efilm:
        size = (f' data-cols="{grid[0]}" data-rows="{grid[1]}"' if grid else "")
        body = (f'{sub}<div class="view film" id="film"{size}><img id="image" '
                f'alt="e-film {index + 1}" src="{img}"></div>'
                '<p class="muted">双指缩放，双击放大单幅图像，再双击还原<br>Pinch to zoom; '
                'double-tap an image to zoom to it, double-tap again to go back.</p>')
        if nonce:
            body += f'<script nonce="{nonce}">{_EFILM}</script>'
        return page(title or "电子胶片", "E-film", body,
                    back=f"{PREFIX}/exams/{_q(study_uid)}")
    body = (f'{sub}<div class="view"><img id="image" alt="image {index + 1}" src="{img}"></div>'
            f'<div class="nav">{nav(index - 1, "‹ 上一张", "prev")}'
            f'<span class="muted">第 {index + 1} / {n} 张</span>'
            f'{nav(index + 1, "下一张 ›", "next")}</div>')
    if nonce:  # swipe left / right for the next / previous image (R-C4)
        body += f'<script nonce="{nonce}">{_SWIPE}</script>'

    return page(title or "图像", "Images", body, back=f"{PREFIX}/exams/{_q(study_uid)}")


def enrol_form(error: str | None = None) -> str:
    """R-C3: reach my exams with card number + phone + SMS code (step 1)."""
    err = ""
    if error:
        err = ('<div class="err" role="alert">请检查就诊卡号和手机号<br>'
               "Please check the card number and the phone number.</div>")
    body = (f'{err}<form method="post" action="{PREFIX}/enrol">'
            f'<label for="card">就诊卡号<br><span class="en">Hospital card number</span>'
            f'</label><input id="card" name="card" autocomplete="off" required '
            f'maxlength="64" placeholder="就诊卡号 Card No.">'
            f'<label for="phone" style="margin-top:14px">手机号<br><span class="en">'
            f'Mobile phone number</span></label><input id="phone" name="phone" '
            f'inputmode="tel" autocomplete="tel" required maxlength="20" '
            f'placeholder="138 0000 0000">'
            f'<button type="submit">获取验证码 · Send me a code</button></form>'
            f'<p class="muted">我们会向您在医院登记的手机号发送短信验证码。<br>'
            f"We send a code by SMS to the phone number you gave the hospital.</p>")
    return page("查看我的影像", "My images", body)


def code_form(wrong: bool) -> str:
    """R-C3 step 2: the code from the SMS."""
    err = ('<div class="err" role="alert">验证码不正确 · Wrong code</div>' if wrong else "")
    body = (f'{err}<div class="card"><p>如果卡号和手机号与医院登记一致，您将收到短信验证码。</p>'
            f'<p class="muted">If the card and phone match the hospital\'s records, a code '
            f"is on its way by SMS.</p></div>"
            f'<form method="post" action="{PREFIX}/enrol/code">'
            f'<label for="code">短信验证码<br><span class="en">Code from the SMS</span>'
            f'</label><input id="code" name="code" inputmode="numeric" '
            f'autocomplete="one-time-code" required maxlength="6" placeholder="000000">'
            f'<button type="submit">确认 · Confirm</button></form>'
            f'<p class="muted"><a href="{PREFIX}/enrol" style="color:#8ab4f8">重新获取 · '
            f"Send a new code</a></p>")
    return page("输入验证码", "Enter code", body, back=f"{PREFIX}/enrol")
