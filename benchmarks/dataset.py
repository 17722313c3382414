"""Deterministic synthetic data set for the benchmarks: CT series and tiny instances.

Everything is derived from one integer seed, so two servers (and two runs) get byte-for-byte
the same objects: UIDs are ``2.25.<120 bits of sha256(seed, kind, index)>``, pixel data
comes from ``numpy.random.default_rng`` seeded per slice. No patient data: names and IDs are
invented; the name pools cover plain ASCII, GB18030 (``Wang^XiaoMing=王^小明=``, the
Orthanc ``test_gbk_alias`` form) and UTF-8 (ISO_IR 192) names.

Parts of the set:

* **CT studies** (``ct_studies`` x ``ct_slices``, default 2 x 100): one axial series each,
  512 x 512 x 16-bit (12 bits stored) slices of a simple chest phantom with noise and a
  row of marker squares coding the InstanceNumber, about 0.5 MB per instance: the read
  set for WADO-RS, metadata, frames and rendering.
* **STOW CT batches**: one fresh CT series (``stow_ct_batch`` slices) per measured STOW
  repetition, so every repetition stores new objects (never an idempotent re-send).
* **Tiny instances** (``tiny``, default 3000): 16 x 16 secondary-capture images, about 1 kB,
  five per study (series of 3 + 2), two studies per patient, spread over 2023-2025 and six
  modalities; they fill the index for QIDO-RS.

:class:`Manifest` records what a server acknowledged and answers "what should this query
return" for the verification in :mod:`benchmarks.verify`.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import struct
from dataclasses import dataclass, field

import numpy as np

ExplicitVRLittleEndian = "1.2.840.10008.1.2.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
CT_SIZE = 512
TINY_SIZE = 16
WINDOW = (40.0, 400.0)  # WindowCenter / WindowWidth written into every CT slice

# Invented name pools. GB18030 and UTF-8 ideographic pools are disjoint so that a
# wildcard on one never matches a component group of the other.
GB_SURNAMES = [("Wang", "王"), ("Zhang", "张"), ("Liu", "刘"), ("Chen", "陈"),
               ("Yang", "杨"), ("Zhao", "赵")]
GB_GIVEN = [("XiaoMing", "小明"), ("Wei", "伟"), ("Fang", "芳"), ("Jing", "静"),
            ("Lei", "磊"), ("Yan", "燕")]
UTF8_NAMES = ["李^娜", "李^强", "黄^丽", "周^杰", "Müller^Jürgen", "Øster^Åse",
              "Łukasz^Zoë", "Müller^Anaïs"]
ASCII_SURNAMES = ["Smith", "Jones", "Brown", "Taylor", "Wilson", "Evans", "Clark", "Walker"]
ASCII_GIVEN = ["John", "Mary", "Anna", "Peter", "Laura", "Mark"]
TINY_MODALITIES = ["MR", "CR", "DX", "US", "MG", "XA"]
#: PatientName wildcard queries: each starts at the first component group and is spelled
#: as stored, so per-group (pacsd) and whole-string (Orthanc) matching agree. ASCII
#: patterns (they also hit the alphabetic group of GB18030 names) and non-ASCII ones
#: (UTF-8 names) are measured apart: servers differ in whether they match the latter.
NAME_PATTERNS = ["Wang*", "Zhang*", "Smi*", "Tay*", "Chen*"]
NAME_PATTERNS_INTL = ["李*", "Mü*", "黄*"]
EPOCH = _dt.date(2023, 1, 1)
# A row of squares in the air above the body codes the InstanceNumber: a start square
# (always bright), 10 bits, an end square (always dark). A rendered image or thumbnail
# must show the right slice the right way up (benchmarks.verify.decode_marker).
MARKER_Y, MARKER_X, MARKER_STEP, MARKER_SIZE, MARKER_BITS = 12, 16, 32, 24, 10


def marker_bits(number: int) -> list[int]:
    return [1] + [(number >> b) & 1 for b in range(MARKER_BITS)] + [0]


@dataclass(slots=True)
class Inst:
    """One instance of the set (its attributes; bytes are built on demand)."""

    kind: str                 # "ct" | "stow_ct" | "tiny"
    index: int                # position within its kind (seeds the pixels)
    study: str
    series: str
    sop: str
    patient_id: str
    patient_name: str         # DICOM PN string as a Python str (decoded)
    charset: str              # SpecificCharacterSet
    study_date: str
    study_time: str
    accession: str
    modality: str
    series_number: int
    instance_number: int
    rows: int
    columns: int
    sha256: str = ""          # filled by DataSet.build
    size: int = 0
    pixel_sha256: str = ""


def _window_8bit(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2 linear VOI to 8 bits (what a viewer/renderer shows)."""
    y = ((hu - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.clip(y, 0, 255).astype(np.uint8)


class DataSet:
    """The generator. Cheap to construct; bytes are made by :meth:`build`."""

    def __init__(self, seed: int = 1, *, ct_studies: int = 2, ct_slices: int = 100,
                 tiny: int = 3000, stow_ct_batch: int = 40) -> None:
        if ct_studies < 1 or ct_slices < 1:
            raise ValueError("at least one CT study with one slice")
        self.seed = seed
        self.ct_studies = ct_studies
        self.ct_slices = ct_slices
        self.tiny = tiny
        self.stow_ct_batch = stow_ct_batch
        self.prefix = f"B{seed}"
        self._grid: tuple[np.ndarray, np.ndarray] | None = None

    # --- identifiers ----------------------------------------------------------------------
    def uid(self, *parts: object) -> str:
        digest = hashlib.sha256(("pacsd-bench:%d:" % self.seed + ":".join(map(str, parts)))
                                .encode()).digest()
        return "2.25." + str(int.from_bytes(digest[:15], "big") or 1)

    def patient(self, p: int) -> tuple[str, str, str]:
        """(PatientID, PatientName, SpecificCharacterSet) of tiny-set patient ``p``."""
        pid = f"{self.prefix}-P{p:05d}"
        cat = p % 10
        if cat in (0, 1):
            sp, sh = GB_SURNAMES[(p // 10) % len(GB_SURNAMES)]
            gp, gh = GB_GIVEN[(p // 3) % len(GB_GIVEN)]
            return pid, f"{sp}^{gp}={sh}^{gh}=", "GB18030"
        if cat in (2, 3):
            return pid, UTF8_NAMES[(p // 10 + cat) % len(UTF8_NAMES)], "ISO_IR 192"
        s = ASCII_SURNAMES[(p // 10 * 3 + cat) % len(ASCII_SURNAMES)]
        g = ASCII_GIVEN[(p // 5) % len(ASCII_GIVEN)]
        return pid, f"{s}^{g}", "ISO_IR 100"

    # --- the parts of the set ---------------------------------------------------------------
    def ct_main(self) -> list[Inst]:
        out = []
        names = [("Zhang^Wei=张^伟=", "GB18030"), ("Müller^Jürgen", "ISO_IR 192"),
                 ("Smith^John", "ISO_IR 100")]
        for s in range(self.ct_studies):
            name, cs = names[s % len(names)]
            study, series = self.uid("ct-study", s), self.uid("ct-series", s)
            for i in range(self.ct_slices):
                out.append(Inst(
                    "ct", s * 100000 + i, study, series, self.uid("ct-sop", s, i),
                    f"{self.prefix}-CT{s:02d}", name, cs, f"202506{(s % 28) + 1:02d}",
                    "083000", f"{self.prefix}CT{s:04d}", "CT", 1, i + 1, CT_SIZE, CT_SIZE))
        return out

    def stow_ct(self, tag: str) -> list[Inst]:
        """A fresh CT series for one measured STOW repetition (``tag`` e.g. 'c4r1')."""
        study, series = self.uid("stow-study", tag), self.uid("stow-series", tag)
        h = int(hashlib.sha256(tag.encode()).hexdigest()[:6], 16)
        return [Inst("stow_ct", h * 1000 + i, study, series, self.uid("stow-sop", tag, i),
                     f"{self.prefix}-STOW", "Bench^Stow", "ISO_IR 100", "20260101", "090000",
                     f"{self.prefix}S{tag}", "CT", 1, i + 1, CT_SIZE, CT_SIZE)
                for i in range(self.stow_ct_batch)]

    def tiny_all(self) -> list[Inst]:
        return self.tiny_range(0, (self.tiny + 4) // 5, limit=self.tiny)

    def tiny_range(self, first_study: int, studies: int, *, limit: int | None = None
                   ) -> list[Inst]:
        """Tiny studies ``first_study`` .. ``first_study + studies - 1`` (five instances
        each; ``limit`` caps the instance count). Studies past ``tiny // 5`` are extra
        data, e.g. for the profiling pass."""
        out = []
        for j in range(first_study, first_study + studies):
            pid, name, cs = self.patient(j // 2)
            date = EPOCH + _dt.timedelta(days=(j * 37) % 1095)
            study = self.uid("tiny-study", j)
            series = [self.uid("tiny-series", j, 0), self.uid("tiny-series", j, 1)]
            modality = TINY_MODALITIES[j % len(TINY_MODALITIES)]
            for k in range(5):
                n = j * 5 + k
                if limit is not None and n >= limit:
                    break
                se = 0 if k < 3 else 1
                out.append(Inst(
                    "tiny", n, study, series[se], self.uid("tiny-sop", n), pid, name, cs,
                    date.strftime("%Y%m%d"), f"{(j * 7) % 24:02d}{(j * 13) % 60:02d}00",
                    f"{self.prefix}A{j:06d}", modality, se + 1, (k if se == 0 else k - 3) + 1,
                    TINY_SIZE, TINY_SIZE))
        return out

    # --- pixels -----------------------------------------------------------------------------
    def ct_hu(self, inst: Inst) -> np.ndarray:
        """Hounsfield units of one CT slice: a chest phantom that changes along z, plus
        noise (float32, 512 x 512)."""
        if self._grid is None:
            yy, xx = np.mgrid[0:CT_SIZE, 0:CT_SIZE].astype(np.float32)
            self._grid = ((xx - CT_SIZE / 2) / (CT_SIZE / 2), (yy - CT_SIZE / 2) / (CT_SIZE / 2))
        x, y = self._grid
        z = (inst.instance_number - 1) / max(1, self.ct_slices - 1)
        hu = np.full(x.shape, -1000.0, dtype=np.float32)
        body = (x / 0.82) ** 2 + (y / 0.62) ** 2
        hu[body <= 1.0] = -100.0                      # fat
        hu[body <= 0.86] = 40.0                       # soft tissue
        lung = 0.55 + 0.4 * np.sin(np.pi * z)
        for cx in (-0.33, 0.33):
            hu[((x - cx) / (0.2 * lung)) ** 2 + ((y + 0.05) / (0.34 * lung)) ** 2 <= 1] = -850
        hu[(x - 0.08) ** 2 + y ** 2 <= (0.16 * (1.1 - z)) ** 2] = 60.0   # heart / liver
        hu[x ** 2 + (y - 0.42) ** 2 <= 0.07 ** 2] = 700.0               # vertebra
        hu[x ** 2 + (y - 0.42) ** 2 <= 0.03 ** 2] = 20.0                # canal
        rng = np.random.default_rng([self.seed, 7, inst.index])
        hu += rng.standard_normal(hu.shape, dtype=np.float32) * 12.0
        for k, bit in enumerate(marker_bits(inst.instance_number)):
            y0, x0 = MARKER_Y, MARKER_X + MARKER_STEP * k
            hu[y0:y0 + MARKER_SIZE, x0:x0 + MARKER_SIZE] = 1000.0 if bit else -1000.0
        return hu

    def stored_pixels(self, inst: Inst) -> np.ndarray:
        if inst.kind == "tiny":
            rng = np.random.default_rng([self.seed, 11, inst.index])
            return rng.integers(0, 4096, size=(TINY_SIZE, TINY_SIZE), dtype=np.uint16)
        return np.clip(self.ct_hu(inst) + 1024.0, 0, 4095).astype(np.uint16)

    def expected_render(self, inst: Inst) -> np.ndarray:
        """8-bit image a correct /rendered shows (window from the file)."""
        stored = self.stored_pixels(inst).astype(np.float32)
        return _window_8bit(stored - 1024.0, *WINDOW)

    # --- bytes ------------------------------------------------------------------------------
    def build(self, inst: Inst) -> bytes:
        """The Part 10 bytes of ``inst`` (deterministic); fills sha256/size/pixel_sha256.

        Encoded here (Explicit VR Little Endian) rather than with pydicom's writer: ~50x
        faster for the thousands of tiny instances, and the bytes do not depend on the
        installed pydicom version, so hashes are stable across machines."""
        codec = CODECS[inst.charset]
        ct = inst.kind != "tiny"
        sop_class = CT_IMAGE_STORAGE if ct else SC_IMAGE_STORAGE
        pixels = self.stored_pixels(inst)
        raw = pixels.astype("<u2").tobytes()
        el: list[tuple[int, str, object]] = [
            (0x00080005, "CS", inst.charset), (0x00080016, "UI", sop_class),
            (0x00080018, "UI", inst.sop), (0x00080020, "DA", inst.study_date),
            (0x00080021, "DA", inst.study_date), (0x00080023, "DA", inst.study_date),
            (0x00080030, "TM", inst.study_time), (0x00080031, "TM", inst.study_time),
            (0x00080050, "SH", inst.accession), (0x00080060, "CS", inst.modality),
            (0x00080070, "LO", "pacsd-bench"), (0x00080080, "LO", "Synthetic Hospital"),
            (0x00080090, "PN", "Ref^Doctor"),
            (0x00081030, "LO", "CT CHEST" if ct else f"{inst.modality} EXAM"),
            (0x0008103E, "LO", "AXIAL 1mm" if ct else f"SERIES {inst.series_number}"),
            (0x00100010, "PN", inst.patient_name), (0x00100020, "LO", inst.patient_id),
            (0x00100030, "DA", "19700101"), (0x00100040, "CS", "O")]
        if ct:
            el += [(0x00180015, "CS", "CHEST"), (0x00180050, "DS", "1.0"),
                   (0x00180060, "DS", "120")]
        el += [(0x0020000D, "UI", inst.study), (0x0020000E, "UI", inst.series),
               (0x00200010, "SH", "1"), (0x00200011, "IS", str(inst.series_number)),
               (0x00200013, "IS", str(inst.instance_number))]
        if ct:
            z = -200.0 + inst.instance_number
            el += [(0x00200032, "DS", f"-250.0\\-250.0\\{z:.1f}"),
                   (0x00200037, "DS", "1\\0\\0\\0\\1\\0"),
                   (0x00200052, "UI", self.uid("for", inst.study)),
                   (0x00201041, "DS", f"{z:.1f}")]
        el += [(0x00280002, "US", 1), (0x00280004, "CS", "MONOCHROME2"),
               (0x00280010, "US", pixels.shape[0]), (0x00280011, "US", pixels.shape[1])]
        if ct:
            el += [(0x00280030, "DS", "0.9765625\\0.9765625")]
        el += [(0x00280100, "US", 16), (0x00280101, "US", 12), (0x00280102, "US", 11),
               (0x00280103, "US", 0)]
        if ct:
            el += [(0x00281050, "DS", f"{WINDOW[0]:g}"), (0x00281051, "DS", f"{WINDOW[1]:g}"),
                   (0x00281052, "DS", "-1024"), (0x00281053, "DS", "1"),
                   (0x00281054, "LO", "HU")]
        el.append((0x7FE00010, "OW", raw))
        body = b"".join(_element(t, vr, v, codec) for t, vr, v in el)
        meta = b"".join(_element(t, vr, v, "ascii") for t, vr, v in [
            (0x00020001, "OB", b"\x00\x01"), (0x00020002, "UI", sop_class),
            (0x00020003, "UI", inst.sop), (0x00020010, "UI", ExplicitVRLittleEndian),
            (0x00020012, "UI", "2.25.1"), (0x00020013, "SH", "PACSD_BENCH")])
        data = (b"\x00" * 128 + b"DICM" + _element(0x00020000, "UL", len(meta), "ascii")
                + meta + body)
        inst.sha256 = hashlib.sha256(data).hexdigest()
        inst.size = len(data)
        inst.pixel_sha256 = hashlib.sha256(raw).hexdigest()
        return data


CODECS = {"GB18030": "gb18030", "ISO_IR 192": "utf-8", "ISO_IR 100": "latin-1"}
_LONG_VRS = {"OB", "OW", "OF", "SQ", "UT", "UN", "UC", "UR", "OD", "OL"}


def _element(tag: int, vr: str, value: object, codec: str) -> bytes:
    """One Explicit VR Little Endian data element."""
    if vr == "US":
        data = struct.pack("<H", value)
    elif vr == "UL":
        data = struct.pack("<I", value)
    elif isinstance(value, bytes):
        data = value
    else:
        data = str(value).encode(codec if vr in ("PN", "LO", "SH", "LT", "ST", "UT") else "ascii")
    if len(data) % 2:
        data += b"\x00" if vr in ("UI", "OB") else b" "
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    if vr in _LONG_VRS:
        return head + b"\x00\x00" + struct.pack("<I", len(data)) + data
    return head + struct.pack("<H", len(data)) + data


@dataclass
class Manifest:
    """What the target acknowledged so far; the source of every expected answer."""

    by_sop: dict[str, Inst] = field(default_factory=dict)
    by_sha: dict[str, str] = field(default_factory=dict)

    def add(self, inst: Inst) -> None:
        self.by_sop[inst.sop] = inst
        self.by_sha[inst.sha256] = inst.sop

    # expected answers ----------------------------------------------------------------------
    def studies(self, pred) -> set[str]:
        return {i.study for i in self.by_sop.values() if pred(i)}

    def series(self, pred) -> set[str]:
        return {i.series for i in self.by_sop.values() if pred(i)}

    def instances_of(self, study: str, series: str | None = None) -> set[str]:
        return {i.sop for i in self.by_sop.values()
                if i.study == study and (series is None or i.series == series)}

    def series_counts(self, study: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in self.by_sop.values():
            if i.study == study:
                out[i.series] = out.get(i.series, 0) + 1
        return out

    def study_count(self, study: str) -> int:
        return sum(1 for i in self.by_sop.values() if i.study == study)


def multipart_body(parts: list[bytes], boundary: str) -> bytes:
    """A STOW-RS request body (``multipart/related; type="application/dicom"``)."""
    chunks = []
    for p in parts:
        chunks += [b"--", boundary.encode(), b"\r\nContent-Type: application/dicom\r\n\r\n",
                   p, b"\r\n"]
    chunks += [b"--", boundary.encode(), b"--\r\n"]
    return b"".join(chunks)
