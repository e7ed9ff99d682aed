"""`ctr-remote batch` against a real registry: each distinct layer converted once, the digests of
running each image alone, shards that share a registry cache, a cache directory that survives runs
and is verified before use, a failed job that does not stop the others."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from ctr_remote.image import open_store
from tests.batch.fleet import SHARED, batch_file, publish_fleet
from tests.conftest import Oracle
from tests.helpers.registry import RegistryServer
from tests.helpers.sample import app_layers, publish, runnable_image
from tests.optimize.conftest import Cli

N = 6


def report(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def outcomes(rep: dict[str, Any]) -> Counter[str]:
    return Counter(la["outcome"] for job in rep["jobs"] for la in job["layers"])


def converted_per_source(reports: list[dict[str, Any]]) -> Counter[str]:
    layers = [la for rep in reports for job in rep["jobs"] for la in job["layers"]]
    return Counter(la["source"] for la in layers if la["outcome"] == "converted")


def digests(rep: dict[str, Any]) -> dict[str, str]:
    return {job["name"]: job["digest"] for job in rep["jobs"]}


@pytest.fixture
def sources(registry: RegistryServer, workdir: Path) -> list[str]:
    return publish_fleet(registry, workdir, N)


def test_each_distinct_layer_is_converted_once_and_digests_equal_running_alone(
    cli: Cli, registry: RegistryServer, sources: list[str], workdir: Path, oracle: Oracle
) -> None:
    file = batch_file(workdir / "batch.yaml", sources, "esgz")
    rep_path = workdir / "report.json"
    run = cli("batch", "--jobs", "3", "--report", str(rep_path), str(file))
    rep = report(rep_path)
    assert rep["ok"] and [j["status"] for j in rep["jobs"]] == ["ok"] * N
    # 2 shared base layers + 1 own layer per image: 8 distinct layers, each converted exactly once.
    per_source = converted_per_source([rep])
    assert len(per_source) == SHARED + N and set(per_source.values()) == {1}
    assert outcomes(rep) == {"converted": SHARED + N, "cached": SHARED * (N - 1)}
    assert "8 converted, 10 cached" in run.stderr
    # Each image alone, with the same flags: the same digests.
    for i, src in enumerate(sources):
        alone = src.replace(":src", ":alone")
        kind = ["image", "optimize", "--no-optimize"] if i % 2 else ["image", "convert", "--estargz"]
        r = cli(*kind, "--plain-http", "--oci", src, alone)
        assert r.stdout.strip().splitlines()[-1] == digests(rep)[f"app{i}"]
    for line in run.stdout.splitlines():  # name<TAB>digest per job
        name, digest = line.split("\t")
        assert digests(rep)[name] == digest
    oracle.check_batch(rep)


def test_three_concurrent_shards_sharing_a_cache_ref_give_the_same_digests(
    cli: Cli, registry: RegistryServer, sources: list[str], workdir: Path, oracle: Oracle
) -> None:
    whole = workdir / "whole.json"
    cli("batch", "--report", str(whole), str(batch_file(workdir / "whole.yaml", sources, "whole")))
    file = batch_file(workdir / "batch.yaml", sources, "esgz")
    cache = registry.ref("ci/layer-cache")
    args = [sys.executable, "-m", "ctr_remote", "batch", "--plain-http", "--cache-ref", cache]
    procs = [
        subprocess.Popen(
            [*args, "--shard", f"{i}/3", "--report", str(workdir / f"shard{i}.json"), str(file)],
            env=cli.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    shards = [report(workdir / f"shard{i}.json") for i in range(3)]
    names = [job["name"] for rep in shards for job in rep["jobs"]]
    assert sorted(names) == sorted(f"app{i}" for i in range(N))  # the whole file, each job once
    assert all(rep["jobs"] for rep in shards), "rendezvous hashing left a shard empty for this file"
    merged = {k: v for rep in shards for k, v in digests(rep).items()}
    assert merged == digests(report(whole))
    for rep in shards:
        oracle.check_batch(rep)
    # A fourth machine with an empty cache directory finds every layer in the registry cache.
    again = workdir / "again.json"
    cli("batch", "--plain-http", "--cache-ref", cache, "--report", str(again), str(file))
    assert outcomes(report(again)) == {"cached": SHARED * N + N}
    assert digests(report(again)) == merged


def uploads(registry: RegistryServer) -> Counter[str]:
    """Completed blob uploads per digest, from the registry's access log."""
    done = re.findall(
        r'"PUT /v2/\S+/blobs/uploads/\S*digest=sha256(?::|%3A)([0-9a-f]{64})', registry.log.read_text()
    )
    return Counter(f"sha256:{d}" for d in done)


def test_a_cache_dir_is_kept_across_runs_and_a_corrupt_entry_is_converted_again(
    cli: Cli, registry_factory: Callable[..., RegistryServer], workdir: Path, oracle: Oracle
) -> None:
    registry = registry_factory("plain", access_log=True)
    sources = publish_fleet(registry, workdir, 2)
    file = batch_file(workdir / "batch.yaml", sources, "esgz")
    cache = workdir / "cache"
    first, second, third = (workdir / f"run{i}.json" for i in range(3))
    before = uploads(registry)
    cli("batch", "--jobs", "1", "--cache-dir", str(cache), "--report", str(first), str(file))
    assert outcomes(report(first)) == {"converted": SHARED + 2, "cached": SHARED}
    # The second image's shared layers are mounted from the first image's repository, not uploaded.
    layers = {la["digest"] for job in report(first)["jobs"] for la in job["layers"]}
    assert {d: n for d, n in (uploads(registry) - before).items() if d in layers} == dict.fromkeys(layers, 1)
    cli("batch", "--cache-dir", str(cache), "--report", str(second), str(file))
    assert outcomes(report(second)) == {"cached": (SHARED + 1) * 2}
    blobs = sorted((cache / "blobs").iterdir())
    with open(blobs[0], "r+b") as f:  # a torn write, a disk error: same size, other bytes
        f.seek(100)
        f.write(b"\0" * 16)
    cli("batch", "--cache-dir", str(cache), "--report", str(third), str(file))
    assert outcomes(report(third)) == {"converted": 1, "cached": (SHARED + 1) * 2 - 1}
    assert digests(report(third)) == digests(report(first))
    oracle.check_batch(report(third))  # the corrupt entry was not used


def test_a_failed_job_does_not_stop_the_others_unless_fail_fast(
    cli: Cli, registry: RegistryServer, sources: list[str], workdir: Path, oracle: Oracle
) -> None:
    missing = registry.ref("nothing:here")
    file = batch_file(workdir / "batch.yaml", [missing, *sources[:2]], "esgz")
    rep_path = workdir / "report.json"
    run = cli(
        "--log-format", "json", "batch", "--jobs", "2", "--report", str(rep_path), str(file), check=False
    )
    assert run.returncode == 1
    assert run.events[-1]["event"] == "1 of 3 jobs did not succeed (see the log above)"
    # Interleaved jobs' lines say whose they are, down to each layer's transfer and conversion.
    steps = [e for e in run.events if e["event"] in ("pull", "converted", "push")]
    assert steps and all(e.get("job") in ("app1", "app2") for e in steps), steps
    (failed,) = [e for e in run.events if e["event"] == "job failed"]
    assert failed["job"] == "app0" and "nothing" in str(failed["error"])
    jobs = report(rep_path)["jobs"]
    assert [j["status"] for j in jobs] == ["failed", "ok", "ok"]
    assert "nothing" in jobs[0]["error"] and "\n" not in jobs[0]["error"]
    assert "digest" not in jobs[0] and jobs[1]["digest"].startswith("sha256:")
    oracle.check_batch(report(rep_path))
    run = cli("batch", "--jobs", "1", "--fail-fast", "--report", str(rep_path), str(file), check=False)
    assert run.returncode == 1
    assert [j["status"] for j in report(rep_path)["jobs"]] == ["failed", "skipped", "skipped"]


def test_optimize_jobs_with_a_real_workload_run_concurrently(
    cli: Cli, registry: RegistryServer, workdir: Path, oracle: Oracle
) -> None:
    """Two jobs profile the same image at once (threads, each its own container): the same recorded
    lists, so the same keys, so each layer converted once; the digest of `image optimize` alone."""
    with open_store(registry.reference("app:src"), registry.options()) as store:
        publish(store, runnable_image(app_layers()), workdir / "push")
    src = registry.ref("app:src")
    jobs = [
        {"optimize": {"name": f"w{i}", "source": src, "target": registry.ref(f"w{i}:esgz")}} for i in (0, 1)
    ]
    file = workdir / "batch.yaml"
    file.write_text(
        yaml.safe_dump({"defaults": {"plain_http": True, "oci": True, "period": 20}, "jobs": jobs})
    )
    rep_path = workdir / "report.json"
    cli("batch", "--jobs", "2", "--report", str(rep_path), str(file))
    rep = report(rep_path)
    assert outcomes(rep) == {"converted": 3, "cached": 3}
    alone = cli.optimize("--oci", src, registry.ref("alone:esgz")).digest
    assert set(digests(rep).values()) == {alone}
    layers = oracle.check_image(f"{registry.host}/w1:esgz")["manifests"][0]["layers"]
    assert "app/data.txt" in (layers[2]["blob"]["prioritized"] or [])


def test_reuse_reports_layers_copied_as_they_are(
    cli: Cli, registry: RegistryServer, workdir: Path, oracle: Oracle
) -> None:
    (src,) = publish_fleet(registry, workdir, 1)
    cli("batch", str(batch_file(workdir / "first.yaml", [src], "esgz")))
    again = workdir / "again.yaml"
    esgz, out = src.replace(":src", ":esgz"), src.replace(":src", ":again")
    jobs = [{"convert": {"source": esgz, "target": out, "estargz": True, "oci": True, "reuse": True}}]
    again.write_text(yaml.safe_dump({"defaults": {"plain_http": True}, "jobs": jobs}))
    rep_path = workdir / "report.json"
    cli("batch", "--report", str(rep_path), str(again))
    assert outcomes(report(rep_path)) == {"reused": SHARED + 1}
    oracle.check_batch(report(rep_path))
