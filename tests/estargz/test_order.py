"""Prioritized files: the same entry order as upstream's estargz.Build for the same layer and list."""

from __future__ import annotations

import random
import tarfile
from pathlib import Path

import pytest

from ctr_remote.estargz import EstargzError, open_estargz
from tests.estargz.layers import (
    SMALL_CHUNK,
    Entry,
    convert,
    d,
    edge_case_entries,
    f,
    make_tar,
    pattern,
    toc_names,
    upstream_layer,
)

pytestmark = pytest.mark.unit

LONG = "deep/" + "d" * 60 + "/" + "e" * 60 + "/" + "f" * 120

CASES = {
    "files-links-devices": (
        edge_case_entries(),
        ["etc/passwd", "./usr/bin/hard", "/dev/fifo", "usr/bin/link", "dev/char", "nope", "etc/passwd", LONG,
         "xattr", "dev/block", "etc/hardone", "opaque/.wh..wh..opq"],
    ),
    "directory-and-root": (edge_case_entries(), ["sticky", "/", "owned/b", "./usr/bin/many"]),
    "duplicates-and-old-landmarks": (
        [d("a/"), f("a/x", b"old"), f(".prefetch.landmark", b"\x0f"), d("b/"), f("b/y", b"y"),
         f("./a/x", pattern(9000)), f(".no.prefetch.landmark", b"\x0f"), d("a")],
        ["b/y", "a/x", "b/y"],
    ),
    "absolute-names": ([d("/"), d("/srv/"), f("/srv/one", b"1"), f("/srv/two", b"2"),
                        Entry("/srv/three", tarfile.LNKTYPE, linkname="/srv/one")],
                       ["srv/three", "/srv/two"]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_prioritized_order_matches_upstream(oracle, oracle_gen: Path, tmp_path: Path, case: str) -> None:
    entries, prioritized = CASES[case]
    layer = make_tar(entries)
    ours, result = convert(tmp_path, layer, chunk_size=SMALL_CHUNK, prioritized_files=prioritized)
    report = oracle.check_blob(ours, result.toc_digest)
    assert report["landmark"] == "prefetch"
    theirs, _ = upstream_layer(oracle_gen, tmp_path, layer, prioritized)
    assert toc_names(ours) == toc_names(theirs)


def test_no_list_puts_the_no_prefetch_landmark_first(oracle, oracle_gen: Path, tmp_path: Path) -> None:
    layer = make_tar(edge_case_entries())
    ours, result = convert(tmp_path, layer, prioritized_files=[])
    assert oracle.check_blob(ours, result.toc_digest)["landmark"] == "no-prefetch"
    assert toc_names(ours) == toc_names(upstream_layer(oracle_gen, tmp_path, layer, None)[0])
    assert toc_names(ours)[0] == ".no.prefetch.landmark"


def test_missing_paths_are_reported(oracle, tmp_path: Path) -> None:
    layer = make_tar([d("etc/"), f("etc/passwd", b"root")])
    listed = ["nope", "/etc/passwd", "etc/passwd/", "etc/nope/deeper"]
    path, result = convert(tmp_path, layer, prioritized_files=listed)
    oracle.check_blob(path, result.toc_digest)
    assert result.missing_prioritized == ("nope", "etc/nope/deeper")
    assert toc_names(path)[:3] == ["etc/", "etc/passwd", ".prefetch.landmark"]


def test_a_hardlink_to_nothing_is_refused(tmp_path: Path) -> None:
    """Upstream's builder writes it; upstream's reader (the snapshotter's) then refuses to open the
    blob ("is a hardlink but the linkname isn't found")."""
    layer = make_tar(
        [d("etc/"), f("etc/passwd", b"root"), Entry("etc/dangling", tarfile.LNKTYPE, linkname="gone")]
    )
    with pytest.raises(
        EstargzError, match=r"^hardlink 'etc/dangling' points at 'gone', which is not in the layer$"
    ):
        convert(tmp_path, layer)


def test_a_list_with_nothing_found_means_no_prefetch(oracle, tmp_path: Path) -> None:
    """Upstream writes a `.prefetch.landmark` with nothing before it here (the oracle warns)."""
    path, result = convert(tmp_path, make_tar([d("a/"), f("a/x", b"x")]), prioritized_files=["not/there"])
    assert oracle.check_blob(path, result.toc_digest)["landmark"] == "no-prefetch"
    assert result.missing_prioritized == ("not/there",)
    assert toc_names(path) == [".no.prefetch.landmark", "a/", "a/x"]


def test_missing_parent_directories_are_added_for_prioritized_files(oracle, tmp_path: Path) -> None:
    """umoci-built layers list no parent directories; upstream then refuses to prioritize the file."""
    layer = make_tar([f("usr/lib/libx.so", pattern(5000), mode=0o755), f("usr/bin/tool", b"#!", mode=0o755),
                      d("opt/"), f("opt/app/run", b"run")])  # fmt: skip
    path, result = convert(
        tmp_path, layer, prioritized_files=["usr/bin/tool", "opt/app/run", "usr/lib/libx.so"]
    )
    report = oracle.check_blob(path, result.toc_digest)
    assert result.missing_prioritized == ()
    assert toc_names(path) == [
        "usr/", "usr/bin/", "usr/bin/tool", "opt/", "opt/app/", "opt/app/run", "usr/lib/", "usr/lib/libx.so",
        ".prefetch.landmark",
    ]  # fmt: skip
    assert report["prioritized"][-1] == "usr/lib/libx.so"
    with path.open("rb") as fh:
        added = {e.name: e for e in open_estargz(fh).entries if e.type == "dir"}
    assert (added["usr/bin/"].mode, added["usr/bin/"].uid, added["usr/bin/"].gid) == (0o755, 0, 0)


FIELDS = ("name", "type", "size", "modtime", "link_name", "mode", "uid", "gid", "dev_major", "dev_minor",
          "xattrs", "digest", "chunk_offset", "chunk_size", "chunk_digest")  # fmt: skip


def test_toc_fields_equal_upstream(oracle, oracle_gen: Path, tmp_path: Path) -> None:
    """Entry by entry, the TOC says what upstream's says (no file here is an exact multiple of the
    chunk size, where upstream records a chunkSize the spec forbids)."""
    layer = make_tar(edge_case_entries(SMALL_CHUNK * 2))
    ours, result = convert(tmp_path, layer, chunk_size=4 << 20)
    oracle.check_blob(ours, result.toc_digest)
    theirs, _ = upstream_layer(oracle_gen, tmp_path, layer, None)
    with ours.open("rb") as a, theirs.open("rb") as b:
        mine, upstream = open_estargz(a).entries, open_estargz(b).entries
    assert len(mine) == len(upstream)
    for m, u in zip(mine, upstream, strict=True):
        for field in FIELDS:
            assert getattr(m, field) == getattr(u, field), (m.name, field)
        assert bool(m.offset) == bool(u.offset), m.name
    # User and group names: recorded once per id and writer, so compare what a reader resolves.
    assert _names(mine) == _names(upstream)


def _names(entries) -> set[tuple[str, int, str]]:  # type: ignore[no-untyped-def]
    return {("u", e.uid, e.user_name) for e in entries if e.user_name} | {
        ("g", e.gid, e.group_name) for e in entries if e.group_name
    }


def _random_layer(rng: random.Random) -> tuple[list[Entry], list[str]]:
    """A layer of random paths with duplicates, links and `./` / `/` prefixes, and a random list.

    Every parent directory has an entry and hardlinks point at unique, earlier files: the cases
    where upstream aborts or recurses forever are covered by the explicit tests above.
    """
    parts = ["a", "b", "cc", "d.d"]
    dirs = sorted({"/".join(rng.choices(parts, k=rng.randint(1, 3))) for _ in range(12)})
    every_dir = sorted({"/".join(p.split("/")[:i]) for p in dirs for i in range(1, p.count("/") + 2)})

    def prefixed(name: str) -> str:
        return rng.choice(["", "", "./", "/"]) + name

    entries = [d(prefixed(p) + "/") for p in every_dir]
    targets: list[str] = []
    for i in range(60):
        parent = rng.choice(every_dir)
        kind = rng.random()
        if kind < 0.45:
            name = f"{parent}/{rng.choice(parts)}.f"  # may repeat: later wins
            entries.append(f(prefixed(name), pattern(rng.randint(0, 3 * SMALL_CHUNK), i)))
        elif kind < 0.6:
            name = f"{parent}/t{i}"
            targets.append(name)
            entries.append(f(prefixed(name), pattern(rng.randint(1, 100), i)))
        elif kind < 0.75 and targets:
            target = prefixed(rng.choice(targets))
            entries.append(Entry(prefixed(f"{parent}/h{i}"), tarfile.LNKTYPE, linkname=target))
        elif kind < 0.85:
            entries.append(Entry(prefixed(f"{parent}/s{i}"), tarfile.SYMTYPE, linkname="../x", mode=0o777))
        elif kind < 0.9:
            entries.append(Entry(prefixed(f"{parent}/p{i}"), tarfile.FIFOTYPE))
        else:
            entries.append(d(prefixed(rng.choice(every_dir)) + "/", mode=0o700))  # a duplicate directory
    names = [e.name for e in entries]
    listed = [prefixed(n.lstrip("./")) for n in rng.sample(names, 12)] + ["missing/file", rng.choice(names)]
    rng.shuffle(listed)
    return entries, listed


@pytest.mark.parametrize("seed", range(8))
def test_random_layers_order_like_upstream(oracle, oracle_gen: Path, tmp_path: Path, seed: int) -> None:
    entries, listed = _random_layer(random.Random(seed))
    layer = make_tar(entries)
    ours, result = convert(tmp_path, layer, chunk_size=SMALL_CHUNK, prioritized_files=listed)
    oracle.check_blob(ours, result.toc_digest)
    theirs, _ = upstream_layer(oracle_gen, tmp_path, layer, listed)
    assert toc_names(ours) == toc_names(theirs)
    assert result.missing_prioritized == ("missing/file",)


def test_upstream_estargz_input_converts_like_its_source(oracle, oracle_gen: Path, tmp_path: Path) -> None:
    layer = make_tar(edge_case_entries())
    listed = ["etc/passwd", "usr/bin/hard"]
    theirs, _ = upstream_layer(oracle_gen, tmp_path, layer, listed)
    again, result = convert(tmp_path, theirs.read_bytes(), "again.esgz", prioritized_files=listed)
    oracle.check_blob(again, result.toc_digest)
    direct, _ = convert(tmp_path, layer, "direct.esgz", prioritized_files=listed)
    assert toc_names(again) == toc_names(direct)


def test_hardlink_to_a_replaced_file_comes_after_its_target(oracle, tmp_path: Path) -> None:
    """`b` links to `a`, which a later duplicate replaces (and so moves after `b`): upstream's order
    keeps `b` first, a blob its own reader rejects ("hardlink target not listed before it")."""
    layer = make_tar([f("a", b"old"), Entry("b", tarfile.LNKTYPE, linkname="a"), d("c/"), f("./a", b"new")])
    path, result = convert(tmp_path, layer)
    oracle.check_blob(path, result.toc_digest)
    assert toc_names(path) == [".no.prefetch.landmark", "./a", "b", "c/"]


@pytest.mark.parametrize(
    ("entries", "cycle"),
    [
        ([d("a/"), Entry("a", tarfile.LNKTYPE, linkname="./a")], "'a' -> 'a'"),
        (
            [
                f("a", b"1"),
                Entry("b", tarfile.LNKTYPE, linkname="a"),
                Entry("./a", tarfile.LNKTYPE, linkname="/b"),
            ],
            "'b' -> 'a' -> 'b'",
        ),
    ],
    ids=["self", "through-a-replaced-file"],
)
def test_hardlink_cycles_are_refused(tmp_path: Path, entries: list[Entry], cycle: str) -> None:
    """Upstream's reader (the snapshotter's) recurses on these until its stack overflows."""
    with pytest.raises(EstargzError, match=f"^hardlink cycle in the layer: {cycle}$"):
        convert(tmp_path, make_tar(entries))


def test_a_hardlink_that_is_the_parent_of_its_target_is_refused(tmp_path: Path) -> None:
    """`x` links to `x/y`: placing `x/y` first needs its parent `x` first (found by the property test:
    the blob listed `x` before its target, which readers reject)."""
    entries = [
        f("x/y", b"y"),
        Entry("a", tarfile.LNKTYPE, linkname="x/y"),
        Entry("x", tarfile.LNKTYPE, linkname="x/y"),
    ]
    with pytest.raises(
        EstargzError, match=r"^hardlink 'x' cannot follow its target 'x/y': the layer has entries"
    ):
        convert(tmp_path, make_tar(entries), prioritized_files=["a"])


@pytest.mark.parametrize("layer_root", [True, False])
def test_a_list_of_only_the_root_means_no_prefetch(oracle, tmp_path: Path, layer_root: bool) -> None:
    """`/` alone put the root entry (or nothing) before `.prefetch.landmark`: readers warn that
    nothing is prioritized."""
    entries = [d("./")] * layer_root + [d("a/"), f("a/x", b"x")]
    path, result = convert(tmp_path, make_tar(entries), prioritized_files=["/", "a/.."])
    assert oracle.check_blob(path, result.toc_digest)["landmark"] == "no-prefetch"
    assert toc_names(path) == [".no.prefetch.landmark", *(e.name for e in entries)]
