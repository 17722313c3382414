"""Film sheet layout and drawing with Pillow (R-C1): a grid of images on black, a header
band (hospital, exam, date, masked patient identity), per-image number, window label and
a scale bar from Pixel Spacing. Pure: images in, PNG / PDF bytes out."""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

#: Default grid (columns, rows) per modality: CT/MR series read as many slices, radiographs
#: and mammograms one or two large images (as film printers are usually set up).
DEFAULT_LAYOUT = {"CT": (4, 5), "MR": (4, 4), "PT": (4, 4), "NM": (3, 4), "US": (3, 4),
                  "XA": (2, 3), "RF": (2, 3), "CR": (1, 1), "DX": (1, 1), "DR": (1, 1),
                  "MG": (2, 1), "OT": (2, 2)}
FALLBACK_LAYOUT = (3, 4)
MAX_COLUMNS, MAX_ROWS = 5, 6
#: Window presets (center, width) in modality units; None = the image's own / min-max.
WINDOWS = {
    "CT": {"soft-tissue": (40, 400), "lung": (-600, 1500), "bone": (400, 1800),
           "brain": (40, 80), "abdomen": (50, 350)},
}
DEFAULT_WINDOW = {"CT": "soft-tissue"}
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
)


def parse_layout(value: str | None, modality: str) -> tuple[int, int]:
    """``"CxR"`` (columns x rows, 1x1 up to 5x6) or the modality's default."""
    if not value:
        return DEFAULT_LAYOUT.get(modality, FALLBACK_LAYOUT)
    m = re.fullmatch(r"(\d)x(\d)", value.strip().lower())
    if not m:
        raise ValueError("layout is COLUMNSxROWS, e.g. 4x5")
    cols, rows = int(m.group(1)), int(m.group(2))
    if not (1 <= cols <= MAX_COLUMNS and 1 <= rows <= MAX_ROWS):
        raise ValueError(f"layout is 1x1 up to {MAX_COLUMNS}x{MAX_ROWS}")
    return cols, rows


def window_for(modality: str, name: str | None) -> tuple[str, tuple[float, float] | None]:
    presets = WINDOWS.get(modality, {})
    name = name or DEFAULT_WINDOW.get(modality)
    if name is None:
        return "auto", None
    if name not in presets:
        raise ValueError(f"window presets for {modality or 'this modality'}: "
                         + (", ".join(sorted(presets)) or "none"))
    return name, presets[name]


def mask_name(name: str, policy: str) -> str:
    """Patient name on the film per policy: ``none`` (as is), ``partial`` (first
    character, the rest as *), ``full`` (hidden)."""
    name = name.replace("^", " ").strip()
    if policy == "none":
        return name
    if policy == "full" or not name:
        return "***"
    return name[0] + "*" * max(1, min(len(name) - 1, 3))


def font(size: int, path: str = "") -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for p in ([path] if path else []) + list(FONT_CANDIDATES):
        if p and Path(p).exists():
            return ImageFont.truetype(p, size)
    return ImageFont.load_default(size=size)


@dataclass(frozen=True)
class Cell:
    png: bytes                       # the rendered image (already windowed)
    label: str                       # e.g. "S2 #14"
    mm_per_pixel: float | None       # of the rendered image (None: no scale bar)


@dataclass(frozen=True)
class Header:
    hospital: str
    exam: str
    date: str
    patient: str
    extra: str                       # modality, window, layout


def cell_size(width: int, height: int, cols: int, rows: int, header_h: int,
              gap: int) -> tuple[int, int]:
    return ((width - gap * (cols + 1)) // cols,
            (height - header_h - gap * (rows + 1)) // rows)


def _scale_bar(draw: ImageDraw.ImageDraw, x: int, y: int, w: int, h: int,
               mm_per_pixel: float, f) -> None:
    """A bar of 1, 2, 5 or 10 cm, at most a third of the cell wide, bottom right."""
    for cm in (10, 5, 2, 1, 0.5):
        px = cm * 10 / mm_per_pixel
        if px <= w / 3:
            break
    else:
        return
    px = int(round(px))
    x1, y1 = x + w - 12, y + h - 14
    x0 = x1 - px
    draw.line([(x0, y1), (x1, y1)], fill=255, width=2)
    for tx in (x0, x1):
        draw.line([(tx, y1 - 6), (tx, y1)], fill=255, width=2)
    label = f"{cm:g} cm"
    tw = draw.textlength(label, font=f)
    draw.text((x1 - tw, y1 - 8 - f.size), label, fill=255, font=f)


def compose(cells: list[Cell], cols: int, rows: int, header: Header, *,
            width: int = 1600, height: int = 2000, font_path: str = "") -> Image.Image:
    """The film sheet as an 8-bit grayscale image (MONOCHROME2 when stored)."""
    header_h, gap = 110, 8
    sheet = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(sheet)
    big, small, tiny = font(34, font_path), font(24, font_path), font(18, font_path)
    draw.rectangle([0, 0, width, header_h - 4], fill=28)
    draw.text((20, 14), header.hospital or "", fill=255, font=big)
    right = f"{header.patient}   {header.date}"
    draw.text((width - 20 - draw.textlength(right, font=big), 14), right, fill=255, font=big)
    draw.text((20, 64), header.exam, fill=200, font=small)
    draw.text((width - 20 - draw.textlength(header.extra, font=small), 64), header.extra,
              fill=200, font=small)
    cw, ch = cell_size(width, height, cols, rows, header_h, gap)
    for i, cell in enumerate(cells[: cols * rows]):
        r, c = divmod(i, cols)
        x, y = gap + c * (cw + gap), header_h + gap + r * (ch + gap)
        img = Image.open(io.BytesIO(cell.png)).convert("L")
        scale = min(cw / img.width, ch / img.height, 1.0)
        if scale < 1.0:
            img = img.resize((max(1, int(img.width * scale)), max(1, int(img.height * scale))),
                             Image.LANCZOS)
        mm = cell.mm_per_pixel / scale if cell.mm_per_pixel else None
        ox, oy = x + (cw - img.width) // 2, y + (ch - img.height) // 2
        sheet.paste(img, (ox, oy))
        draw.rectangle([x, y, x + cw - 1, y + ch - 1], outline=70)
        draw.text((x + 8, y + 6), cell.label, fill=255, font=tiny)
        if mm:
            _scale_bar(draw, x, y, cw, ch, mm, tiny)
    return sheet


def to_png(sheet: Image.Image) -> bytes:
    out = io.BytesIO()
    sheet.save(out, format="PNG", optimize=False)
    return out.getvalue()


def to_pdf(sheet: Image.Image, dpi: float = 114.3) -> bytes:
    """One page; at the default dpi a 1600x2000 sheet prints as 14x17.5 in (film size)."""
    out = io.BytesIO()
    sheet.convert("RGB").save(out, format="PDF", resolution=dpi)
    return out.getvalue()
