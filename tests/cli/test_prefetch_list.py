from pathlib import Path

import pytest

from ctr_remote.prefetch_list import PrefetchList, PrefetchListError, attribute_top_down

NAMES = [
    "bin/",
    "bin/sh",
    "bin/ls",
    "usr/lib/python3/a.py",
    "usr/lib/python3/pkg/b.py",
    "usr/lib/x.so",
    "etc/passwd",
]


def load(tmp_path: Path, text: str) -> PrefetchList:
    f = tmp_path / "list"
    f.write_text(text)
    return PrefetchList.load(f)


def test_paths_keep_list_order_and_skip_comments(tmp_path: Path) -> None:
    pl = load(tmp_path, "# the app\n/etc/passwd\n\n./bin/sh\nmissing/file\nbin/sh\n")
    assert pl.select(NAMES) == ["etc/passwd", "bin/sh"]


def test_globs(tmp_path: Path) -> None:
    assert load(tmp_path, "bin/*").select(NAMES) == ["bin/sh", "bin/ls"]
    assert load(tmp_path, "usr/lib/*.py").select(NAMES) == []
    assert load(tmp_path, "usr/**/*.py").select(NAMES) == ["usr/lib/python3/a.py", "usr/lib/python3/pkg/b.py"]
    assert load(tmp_path, "**/x.so").select(NAMES) == ["usr/lib/x.so"]
    assert load(tmp_path, "bin/[lx]?").select(NAMES) == ["bin/ls"]
    assert load(tmp_path, "bin/[!l]*").select(NAMES) == ["bin/sh"]


def test_bad_glob_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PrefetchListError, match="unclosed"):
        load(tmp_path, "bin/[abc\n")


def test_top_down_attribution() -> None:
    assert attribute_top_down([["a", "b"], ["b", "c"]]) == [["a"], ["b", "c"]]
