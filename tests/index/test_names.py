"""Person-name normalisation rule (names.py): pure unit tests."""
from __future__ import annotations

from pacsd.index import names


def test_compact_rule():
    assert names.compact("Wang^XiaoMing") == "wangxiaoming"
    assert names.compact("王^小明") == names.compact("王 小明") == "王小明"
    assert names.compact("ＷＡＮＧ") == "wang"          # full-width -> NFKC
    assert names.compact("Straße") == names.compact("STRASSE")  # casefold
    assert names.compact("Smith^John^^^") == "smithjohn"  # trailing empty components
    assert names.compact("Sm*th?") == "sm*th?"            # wildcards survive


def test_split_groups():
    assert names.split_groups("A^B=C^D=E") == ("A^B", "C^D", "E")
    assert names.split_groups("A") == ("A", "", "")
    assert names.split_groups("=I") == ("", "I", "")
    assert names.split_groups("a=b=c=d") == ("a", "b", "c=d")


def test_search_columns():
    cols = names.search_columns("Wang^XiaoMing=王^小明=ワン^シャオミン")
    assert cols["alpha"] == "wangxiaoming" and cols["ideo"] == "王小明"
    assert cols["phon"] == "ワンシャオミン"
    words = cols["words"].split(" ")
    assert words[0] == ""  # space-led, so '% w%' finds a word start
    assert {"wang", "xiaoming", "王", "小明", "王小明", "wangxiaoming"} <= set(words)
    assert names.search_columns(None) == {"alpha": None, "ideo": None, "phon": None,
                                          "words": None}
    assert names.search_columns("Doe")["ideo"] is None


def test_query_words():
    assert names.query_words("smi jo") == ["smi", "jo"]
    assert names.query_words("John^Smith=约翰") == ["john", "smith", "约翰"]
    assert names.query_words(" ^ ") == []
