"""Person-name (PN) normalisation for storage and QIDO-RS matching (R-A1, PS3.4 C.2.2.2).

A stored PN value 'Alphabetic=Ideographic=Phonetic' (already decoded to Unicode by ingest)
gets four search columns; a query is normalised the same way. The rule, exactly:

``compact(s)``
    Unicode NFKC, then ``str.casefold``, then NFKC again, then every '^' and every
    whitespace character removed. So full-width and half-width forms compare equal, case
    is ignored, and component boundaries and spacing are ignored:
    ``Wang^XiaoMing`` -> ``wangxiaoming``, ``王^小明`` -> ``王小明``, ``王 小明`` -> ``王小明``.

Stored columns (``*_alpha``, ``*_ideo``, ``*_phon``)
    ``compact`` of each component group; NULL when the group is empty.

Matching (non-fuzzy)
    A query value without '=' matches when ``compact(query)`` equals (or, with ``*``/``?``,
    wildcard-matches) the compact form of *any* of the three groups. A query with '='
    is matched group by group: every non-empty query group must match the same group
    of the stored name. ``Wang^XiaoMing``, ``WANG^XIAOMING``, ``王小明``, ``王^小明``,
    ``王*`` and ``=王^小明`` all match ``Wang^XiaoMing=王^小明=``.
    Why ignore '^' and spaces in every group, not only the ideographic one: Chinese
    modalities very often put Hanzi in the *alphabetic* group, with or without '^'; a
    clerk typing 王小明 must still find them. The price is that ``Li^Na`` also matches
    ``Lin^A``, which is harmless for a search.

``*_words`` (fuzzymatching=true)
    A space-led, space-separated list of every word of every group (words split at '^',
    '=' and whitespace, each ``compact``-ed) plus the compact form of each whole group.
    Fuzzy matching splits the query into words the same way; every query word must be a
    prefix of some stored word: ``smi`` matches ``Smith^John`` and ``John^Smith``; ``王小``
    matches ``王^小明`` (prefix of the whole group ``王小明``). No phonetic algorithm.

Case: PN matching is case-insensitive (PS3.4 leaves this to the SCP for PN); every other
text attribute matches case-sensitively, as PS3.4 C.2.2.2.1 asks.
"""
from __future__ import annotations

import re
import unicodedata

_IGNORABLE = re.compile(r"[\s^]+")
_WORD_SPLIT = re.compile(r"[\s^=]+")


def compact(text: str) -> str:
    """The normalised comparison form of one component group or query group."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return _IGNORABLE.sub("", folded)


def split_groups(value: str) -> tuple[str, str, str]:
    """'A=I=P' -> (A, I, P); missing groups are ''. Extra '=' beyond two stay in P."""
    parts = value.split("=", 2)
    parts += [""] * (3 - len(parts))
    return parts[0], parts[1], parts[2]


def query_words(value: str) -> list[str]:
    """Words of a fuzzy query (or of a stored name), compact-ed, empties dropped."""
    return [w for w in (compact(x) for x in _WORD_SPLIT.split(value)) if w]


def search_columns(value: str | None) -> dict[str, str | None]:
    """The four search column values for a stored PN value (keys alpha/ideo/phon/words)."""
    if not value:
        return {"alpha": None, "ideo": None, "phon": None, "words": None}
    groups = [compact(g) for g in split_groups(value)]
    words: list[str] = []
    for w in query_words(value) + groups:
        if w and w not in words:
            words.append(w)
    return {
        "alpha": groups[0] or None,
        "ideo": groups[1] or None,
        "phon": groups[2] or None,
        "words": (" " + " ".join(words)) if words else None,
    }
