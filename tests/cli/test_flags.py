"""Flag syntax and the combinations the command refuses, through the real CLI where it matters."""

import subprocess
import sys
from pathlib import Path

import click
import pytest

from ctr_remote.cli import flags
from ctr_remote.profile.workload import Mount

pytestmark = pytest.mark.unit


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ctr_remote", *args], capture_output=True, text=True)


def test_mount_syntax_and_aliases() -> None:
    assert flags.mount("type=bind,src=/a,dst=/b,options=rbind:ro") == Mount(
        "bind", "/a", "/b", ("rbind", "ro")
    )
    assert flags.mount("type=tmpfs,destination=/t") == Mount("tmpfs", "", "/t", ())
    with pytest.raises(click.BadParameter, match="unknown field"):
        flags.mount("kind=bind,dst=/b")
    with pytest.raises(click.BadParameter, match="absolute"):
        flags.mount("type=bind,src=/a,dst=b")


def test_add_hosts_splits_at_first_colon() -> None:
    assert flags.add_hosts("a:1.2.3.4,v6:::1") == (("a", "1.2.3.4"), ("v6", "::1"))
    with pytest.raises(click.BadParameter):
        flags.add_hosts("nocolon")


def test_json_arrays() -> None:
    assert flags.json_array("--args", '["a", "b c"]') == ("a", "b c")
    assert flags.json_array("--args", None) is None
    for bad in ("a b", '{"a": 1}', "[1]"):
        with pytest.raises(click.BadParameter):
            flags.json_array("--args", bad)


def test_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_HOST", "h")
    f = tmp_path / "env"
    f.write_text("# comment\nA=1\n\nB=x=y\nFROM_HOST\nUNSET_ON_HOST\n")
    assert flags.env_file(f) == ("A=1", "B=x=y", "FROM_HOST=h")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-t"], 'terminal flag must be specified with "-i"'),
        (["-t", "-i", "--wait-on-signal"], "wait-on-signal can't be used with terminal flag"),
        (["--no-optimize", "--prefetch-list", "PL"], "--prefetch-list can't be used with --no-optimize"),
        (["--cni", "--net-host"], "--cni can't be used with --net-host"),
        (["--estargz-compression-level", "0"], "between 1 and 9"),
        (["--entrypoint", "sh -c"], "--entrypoint"),
        (["--nosuch"], "No such option"),
        (["--zstdchunked"], "option --zstdchunked must be used in conjunction with --oci"),
        (["--oci", "--zstdchunked", "--zstdchunked-compression-level", "23"], "between 1 and 22, got 23"),
        (["--estargz-external-toc", "--reuse"], '"estargz-external-toc" can\'t be used with "reuse" flag'),
        (["--oci", "--zstdchunked", "--estargz-external-toc"], "can't be used with --zstdchunked"),
        (["--estargz-min-chunk-size", "-1"], "--estargz-min-chunk-size must not be negative"),
        (["--estargz-parallelism", "-2"], "--estargz-parallelism must not be negative"),
        (["--GH", "zcat"], "invalid gzip helper 'zcat': use one of pigz, igzip, gzip"),
        (["--platform", "linux//arm"], "invalid platform 'linux//arm'"),
        (["--prefetch-list", "BADPL"], "unclosed '['"),
        (["SRC=UPPER/Case::bad"], "invalid reference 'UPPER/Case::bad'"),
        (["SRC=http://127.0.0.1:5000/a:b"], "--plain-http option must be specified"),
    ],
)
def test_refused_combinations_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    """Usage errors exit 2 (runtime errors 1, Ctrl-C 130, SIGTERM 143) before anything is fetched."""
    (tmp_path / "PL").write_text("bin/sh\n")
    (tmp_path / "BADPL").write_text("bin/[sh\n")
    src = "local:///nonexistent/src"
    for a in args:
        if a.startswith("SRC="):
            src = a.removeprefix("SRC=")
    args = [str(tmp_path / a) if a in ("PL", "BADPL") else a for a in args if not a.startswith("SRC=")]
    p = run("image", "optimize", *args, src, f"local://{tmp_path}/dst")
    assert p.returncode == 2
    assert message in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "dst").exists()


def test_help_lists_upstream_flags() -> None:
    p = run("images", "optimize", "--help")
    assert p.returncode == 0
    for flag in (
        "--plain-http",
        "--reuse",
        "--platform",
        "--all-platforms",
        "--no-optimize",
        "--record-out",
        "--oci",
        "--estargz-compression-level",
        "--estargz-chunk-size",
        "--period",
        "--wait-on-signal",
        "--wait-on-line",
        "--terminal",
        "-i",
        "--user",
        "--cwd",
        "--args",
        "--entrypoint",
        "--env",
        "--env-file",
        "--mount",
        "--dns-nameservers",
        "--dns-search-domains",
        "--dns-options",
        "--add-hosts",
        "--cni",
        "--cni-plugin-conf-dir",
        "--cni-plugin-config-dir",
        "--cni-plugin-dir",
        "--net-host",
        "--runtime",
        "--prefetch-list",
        "--zstdchunked",
        "--zstdchunked-compression-level",
        "--estargz-min-chunk-size",
        "--estargz-external-toc",
        "--estargz-gzip-helper",
        "--GH",
        "--estargz-parallelism",
    ):
        assert flag in p.stdout, flag
