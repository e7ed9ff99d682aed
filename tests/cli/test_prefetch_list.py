from pathlib import Path

import pytest

from ctr_remote.prefetch_list import PrefetchList, PrefetchListError, visible_per_layer

pytestmark = pytest.mark.unit

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


def test_lines_are_cleaned_as_tar_names_are(tmp_path: Path) -> None:
    """Each spelling alone (no plain duplicate in the list) selects the entry; layer names are
    cleaned the same way (`./bin/sh` in a layer is `bin/sh`)."""
    for line in ("./usr/lib/x.so", "usr//lib/x.so", "/usr/./lib/x.so", "./usr/lib//x.so/"):
        assert load(tmp_path, line + "\n").select(NAMES) == ["usr/lib/x.so"], line
    assert load(tmp_path, "bin/sh\n").select(["./bin/sh", "./bin//ls"]) == ["bin/sh"]


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


def test_visible_per_layer_follows_overlayfs() -> None:
    lower = [
        ("etc/", True), ("etc/a", False), ("etc/b", False), ("opt/", True), ("opt/x", False),
        ("lib/", True), ("lib/libc.so", False), ("keep", False),
    ]  # fmt: skip
    upper = [
        ("etc/.wh.a", False),  # deleted
        ("etc/b", False),  # replaced: the upper copy is the one read
        ("opt/", True), ("opt/.wh..wh..opq", False), ("opt/y", False),  # opaque: lower opt/* gone
        ("lib", False),  # a symlink over a directory hides the directory's files
    ]  # fmt: skip
    assert visible_per_layer([lower, upper]) == [["etc", "keep"], ["etc/b", "opt", "opt/y", "lib"]]


def test_globs_never_select_whiteouts_or_deleted_files(tmp_path: Path) -> None:
    visible = visible_per_layer([[("etc/a.conf", False), ("etc/b.conf", False)], [("etc/.wh.a.conf", False)]])
    pl = load(tmp_path, "etc/*")
    assert [pl.select(names) for names in visible] == [["etc/b.conf"], []]
