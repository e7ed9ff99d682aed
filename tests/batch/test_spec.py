"""The batch file is checked whole, by the commands' own parsers, before any job runs: each problem
is one line naming the file, the job and the key, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ctr_remote.batch.spec import BatchFileError, load, parse
from ctr_remote.estargz import LayerFormat
from ctr_remote.image import parse_platform

# Nothing listens on port 1: a job that ran would fail with a connection error (exit 1), not 2.
SRC, DST = "http://127.0.0.1:1/app:v1", "http://127.0.0.1:1/app:esgz"


def doc(*jobs: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    return {"defaults": {"plain_http": True, **defaults}, "jobs": list(jobs)}


def convert(**kw: Any) -> dict[str, Any]:
    return {"convert": {"source": SRC, "target": DST, "estargz": True, **kw}}


def optimize(**kw: Any) -> dict[str, Any]:
    return {"optimize": {"source": SRC, "target": DST.replace("esgz", "opt"), **kw}}


def test_options_mean_what_the_flags_mean(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("bin/sh\n")
    jobs = parse(
        doc(
            convert(name="c", estargz_compression_level=4, platform=["linux/arm64", "linux/amd64"]),
            optimize(
                entrypoint=["/bin/sh", "-c"], args='["echo hi"]', env=["A=1", "B=2"], period=2.5,
                prefetch_list="list.txt", zstdchunked=True,
            ),
            oci=True,
        ),
        tmp_path / "b.yaml",
    )  # fmt: skip
    c, o = jobs
    assert (c.name, c.kind, o.name, o.kind) == ("c", "convert", DST.replace("esgz", "opt"), "optimize")
    assert c.options.oci and o.options.oci  # from the defaults
    assert c.options.layer.compression_level == 4 and not c.options.optimize
    assert c.options.platforms == (parse_platform("linux/arm64"), parse_platform("linux/amd64"))
    assert o.workload.entrypoint == ("/bin/sh", "-c") and o.workload.args == ("echo hi",)
    assert o.workload.env == ("A=1", "B=2") and o.workload.period == 2.5
    assert o.options.prefetch is not None and o.options.layer.format is LayerFormat.ZSTD_CHUNKED


@pytest.mark.parametrize(
    ("jobs", "defaults", "message"),
    [
        ([convert(), convert(target=DST + "2", colour=1)], {}, f"job 2 ({DST}2): unknown key 'colour'"),
        ([convert(), convert(period=3, target=DST + "2")], {}, "unknown key 'period' for convert"),
        ([convert(), optimize(name="o", period="soon")], {}, "job 2 (o): period: 'soon' is not a number"),
        ([convert(name="c", target="http://127.0.0.1:1/App::x")], {}, "job 1 (c): target: invalid reference"),
        ([convert(name="c", source="")], {}, "job 1 (c): source: required"),
        ([convert(name="c", oci="yes")], {}, "job 1 (c): oci: want true or false, not 'yes'"),
        ([optimize(name="o", args="[nope")], {}, "job 1 (o): args: not a JSON array"),
        ([optimize(name="o", platform="linux/")], {}, "job 1 (o): platform:"),
        ([optimize(name="o", terminal=True)], {}, "job 1 (o): terminal: not available in a batch"),
        ([convert(name="c", estargz=False)], {}, "job 1 (c): specify layer converter"),
        ([convert(name="c", estargz_compression_level=12)], {}, "job 1 (c): --estargz-compression-level"),
        ([convert(name="a"), convert(name="a", target=DST + "2")], {}, "job 2 (a): name: a is also job 1's"),
        ([convert(name="a"), convert(name="b")], {}, f"job 2 (b): target: {DST} is also job 1's"),
        ([convert()], {"colour": 1}, "defaults: unknown key 'colour'"),
        ([{"convert": {}, "optimize": {}}], {}, "job 1: want `optimize: {...}` or `convert: {...}`"),
    ],
)  # fmt: skip
def test_a_bad_file_is_an_error_naming_job_and_key(
    tmp_path: Path, jobs: list[dict[str, Any]], defaults: dict[str, Any], message: str
) -> None:
    with pytest.raises(BatchFileError) as e:
        parse(doc(*jobs, **defaults), tmp_path / "b.yaml")
    assert message in str(e.value) and str(e.value).startswith(f"{tmp_path / 'b.yaml'}: ")
    assert e.value.exit_code == 2


def test_not_yaml_or_not_a_batch(tmp_path: Path) -> None:
    f = tmp_path / "b.yaml"
    f.write_text("jobs: [\n")
    with pytest.raises(BatchFileError, match=r"not valid YAML \(line"):
        load(f)
    f.write_text("jobz: []\n")
    with pytest.raises(BatchFileError, match="unknown top-level key 'jobz'"):
        load(f)
    with pytest.raises(BatchFileError, match="cannot read"):
        load(tmp_path / "missing.yaml")


def test_the_cli_validates_everything_before_running_anything(tmp_path: Path) -> None:
    f = tmp_path / "b.yaml"
    f.write_text(yaml.safe_dump(doc(convert(name="first"), optimize(name="second", period="soon"), oci=True)))
    p = subprocess.run(
        [sys.executable, "-m", "ctr_remote", "batch", str(f)], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == f"ctr-remote: {f}: job 2 (second): period: 'soon' is not a number of seconds\n"
