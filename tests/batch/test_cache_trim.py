"""`--cache-max-size`: at the end of a run the cache directory is trimmed to the size, least recently
used entries first (a hit is a use), this run's entries last, an entry larger than the bound not
kept at all; another process using an entry the trim evicts still reads it whole."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import structlog
import yaml

from ctr_remote.cancel import CancelToken
from ctr_remote.cli.types import SIZE
from ctr_remote.image import Descriptor, open_store
from ctr_remote.layercache.local import LayerCache
from ctr_remote.layercache.verify import file_digest
from tests.batch.fleet import batch_file, publish_fleet
from tests.batch.test_batch_registry import digests, outcomes, report
from tests.batch.test_cache_tamper import UNUSABLE
from tests.conftest import Oracle
from tests.helpers.images import LayerBuilder
from tests.helpers.registry import RegistryServer
from tests.helpers.sample import publish, runnable_image
from tests.optimize.conftest import Cli, Run


def batch(
    cli: Cli, workdir: Path, name: str, cache: Path, file: Path, *args: str
) -> tuple[Run, dict[str, Any]]:
    rep = workdir / f"{name}.json"
    run = cli(
        "--log-format",
        "json",
        "batch",
        "--jobs",
        "1",
        "--cache-dir",
        str(cache),
        "--report",
        str(rep),
        *args,
        str(file),
    )
    assert not [e for e in run.events if e["event"] == UNUSABLE]  # never a half-evicted entry
    return run, report(rep)


def trimmed(run: Run) -> dict[str, object]:
    (line,) = [e for e in run.events if e["event"] == "layer cache trimmed"]
    return line


def entries(cache: Path) -> dict[str, int]:
    """Converted layer digest -> bytes its entry holds (key file and blobs)."""
    out = {}
    for key in (cache / "keys").glob("*.json"):
        doc = json.loads(key.read_text())
        blobs = [doc["desc"]["digest"], *([doc["toc"]["digest"]] if doc.get("toc") else [])]
        size = key.stat().st_size + sum(
            (cache / "blobs" / b.removeprefix("sha256:")).stat().st_size for b in blobs
        )
        out[doc["desc"]["digest"]] = size
    return out


def layers_of(rep: dict[str, Any], job: str) -> list[str]:
    """The converted digests of a job's layers, in the image's order."""
    (found,) = [j for j in rep["jobs"] if j["name"] == job]
    return [la["digest"] for la in found["layers"]]


def consistent(cache: Path) -> None:
    """Every key file names blobs that are there, every blob is named, no run directory is left."""
    named = set()
    for key in (cache / "keys").iterdir():
        doc = json.loads(key.read_text())
        named |= {doc["desc"]["digest"], *([doc["toc"]["digest"]] if doc.get("toc") else [])}
    assert {"sha256:" + p.name for p in (cache / "blobs").iterdir()} == named
    assert not list((cache / "runs").iterdir())


def one_job_file(path: Path, source: str, target: str) -> Path:
    job = {"convert": {"name": "solo", "source": source, "target": target, "estargz": True}}
    path.write_text(yaml.safe_dump({"defaults": {"plain_http": True, "oci": True}, "jobs": [job]}))
    return path


def publish_solo(registry: RegistryServer, workdir: Path, name: str, size: int) -> str:
    """An image of one layer of `size` incompressible bytes, sharing nothing with the fleet."""
    layer = LayerBuilder().file(f"{name}/data.bin", random.Random(name).randbytes(size))
    with open_store(registry.reference(f"{name}:src"), registry.options()) as store:
        publish(store, runnable_image([layer]), workdir / f"push-{name}")
    return registry.ref(f"{name}:src")


def test_sizes_parse_and_bad_ones_are_usage_errors(cli: Cli, workdir: Path) -> None:
    assert [SIZE.convert(v, None, None) for v in ("123", "500M", "10G", "1.5k", "2KiB", "3 GB")] == [
        123,
        500 << 20,
        10 << 30,
        1536,
        2048,
        3 << 30,
    ]
    file = workdir / "b.yaml"
    file.write_text("jobs: []\n")
    for value in ("lots", "-1", "10X", "1.5", ""):
        run = cli(
            "batch", "--cache-dir", str(workdir / "c"), "--cache-max-size", value, str(file), check=False
        )
        assert run.returncode == 2 and "--cache-max-size" in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
    run = cli("batch", "--cache-max-size", "1G", str(file), check=False)
    assert run.returncode == 2 and "--cache-max-size needs --cache-dir" in run.stderr


def test_trim_evicts_the_least_recently_used_entries_and_keeps_this_runs(
    cli: Cli, registry: RegistryServer, workdir: Path, oracle: Oracle
) -> None:
    sources = publish_fleet(registry, workdir, 3)
    cache = workdir / "cache"
    _, first = batch(cli, workdir, "first", cache, batch_file(workdir / "two.yaml", sources[:2], "esgz"))
    sizes = entries(cache)
    base1, base2, own0 = layers_of(first, "app0")
    own1 = layers_of(first, "app1")[2]
    # app2 shares the base layers; its own entry is about the size of the others' own ones.
    bound = sizes[base1] + sizes[base2] + max(sizes[own0], sizes[own1]) + min(sizes[own0], sizes[own1]) // 2
    third = batch_file(workdir / "third.yaml", sources[2:], "esgz")
    run, rep = batch(cli, workdir, "third", cache, third, "--cache-max-size", str(bound))
    assert outcomes(rep) == {"cached": 2, "converted": 1}
    line = trimmed(run)
    assert (line["evicted"], line["freed_bytes"]) == (2, sizes[own0] + sizes[own1])
    assert set(entries(cache)) == {base1, base2, layers_of(rep, "app0")[2]}
    assert sum(entries(cache).values()) == line["size"] <= bound
    consistent(cache)
    oracle.check_image(f"{registry.host}/app2:esgz")
    # The evicted layers are converted again, the kept ones taken: the same images as before.
    _, again = batch(cli, workdir, "again", cache, workdir / "two.yaml")
    assert outcomes(again) == {"cached": 4, "converted": 2} and digests(again) == digests(first)


def test_a_hit_is_a_use(cli: Cli, registry: RegistryServer, workdir: Path, oracle: Oracle) -> None:
    """Entries written long ago but taken by a later run outlive one written since and not taken."""
    sources = publish_fleet(registry, workdir, 2)
    solo = one_job_file(
        workdir / "solo.yaml", publish_solo(registry, workdir, "solo", 4096), registry.ref("solo:esgz")
    )
    batch(cli, workdir, "measure", workdir / "scratch", solo)
    solo_size = sum(entries(workdir / "scratch").values())
    cache = workdir / "cache"
    _, first = batch(cli, workdir, "first", cache, batch_file(workdir / "two.yaml", sources, "esgz"))
    own1 = layers_of(first, "app1")[2]  # written after app0's layers ...
    batch(
        cli, workdir, "hit", cache, batch_file(workdir / "one.yaml", sources[:1], "esgz")
    )  # ... which are hit
    sizes = entries(cache)
    run, _ = batch(
        cli, workdir, "solo", cache, solo, "--cache-max-size", str(sum(sizes.values()) + solo_size - 1)
    )
    assert (trimmed(run)["evicted"], trimmed(run)["freed_bytes"]) == (1, sizes[own1])
    assert own1 not in entries(cache) and set(sizes) - {own1} <= set(entries(cache))
    consistent(cache)
    oracle.check_image(f"{registry.host}/solo:esgz")


def test_an_entry_larger_than_the_bound_is_not_kept(
    cli: Cli, registry: RegistryServer, workdir: Path, oracle: Oracle
) -> None:
    """It goes first, even though this run used it: the others, which fit, stay."""
    sources = publish_fleet(registry, workdir, 1)
    cache = workdir / "cache"
    batch(cli, workdir, "first", cache, batch_file(workdir / "one.yaml", sources, "esgz"))
    small = entries(cache)
    big = one_job_file(
        workdir / "big.yaml", publish_solo(registry, workdir, "big", 256 << 10), registry.ref("big:esgz")
    )
    bound = sum(small.values()) + 1024
    assert bound < 256 << 10
    run, rep = batch(cli, workdir, "big", cache, big, "--cache-max-size", str(bound))
    assert trimmed(run)["evicted"] == 1 and set(entries(cache)) == set(small)
    consistent(cache)
    oracle.check_image(f"{registry.host}/big:esgz")
    assert outcomes(rep) == {"converted": 1}


def source_layers(registry: RegistryServer, repo_tag: str) -> dict[str, Descriptor]:
    from ctr_remote.image.manifest import parse_manifest

    with open_store(registry.reference(repo_tag), registry.options()) as store:
        top = store.resolve()
        manifest = parse_manifest(store.read_manifest(top), top.media_type)
    return {d.digest: d for d in manifest.layers}


def test_a_layer_another_process_evicts_stays_whole_for_the_run_using_it(
    cli: Cli, registry: RegistryServer, workdir: Path
) -> None:
    """Two processes on one directory (here two caches in one process: each its own run directory):
    one has taken an entry, the other trims the directory to nothing meanwhile."""
    (src,) = publish_fleet(registry, workdir, 1)
    cache = workdir / "cache"
    _, rep = batch(cli, workdir, "first", cache, batch_file(workdir / "one.yaml", [src], "esgz"))
    layers = source_layers(registry, "app0:src")
    keys = [json.loads(p.read_text()) for p in sorted((cache / "keys").glob("*.json"))]
    (job,) = rep["jobs"]
    source_of = {la["digest"]: layers[la["source"]] for la in job["layers"]}
    with LayerCache(cache) as user, LayerCache(cache) as trimmer, structlog.testing.capture_logs() as logs:
        taken = user.lookup(keys[0]["key"], source_of[keys[0]["desc"]["digest"]], CancelToken())
        assert taken is not None
        assert trimmer.trim(0).entries == len(keys)
        assert not list((cache / "keys").iterdir()) and not list((cache / "blobs").iterdir())
        assert file_digest(taken.path) == taken.desc.digest  # still there, whole
        # An entry evicted between a look-up's reading its key file and its blob is a plain miss.
        assert user.lookup(keys[1]["key"], source_of[keys[1]["desc"]["digest"]], CancelToken()) is None
    assert not [e for e in logs if e["log_level"] == "warning"], logs
    assert not list((cache / "runs").iterdir())


LIVE = """
import sys
from pathlib import Path
from ctr_remote.layercache.local import LayerCache
cache = LayerCache(Path(sys.argv[1]))
print("ready", flush=True)
sys.stdin.read()
"""


def test_a_dead_processs_run_directory_is_removed(workdir: Path) -> None:
    """A process killed mid-run leaves its run directory (links that hold evicted blobs on disk):
    the next process removes it, and never a live process's."""
    cache = workdir / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-c", LIVE, str(cache)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        with LayerCache(cache) as other:
            other.trim(1 << 30)
            assert len(list((cache / "runs").glob("run-*"))) == 2  # the live process's kept
    finally:
        proc.kill()
        proc.wait()
    with LayerCache(cache) as after:
        after.trim(1 << 30)
        assert [p.name for p in (cache / "runs").iterdir()] == [after._run.name]
    assert not list((cache / "runs").iterdir())


def test_a_zero_bound_empties_the_directory(
    cli: Cli, registry: RegistryServer, workdir: Path, oracle: Oracle
) -> None:
    (src,) = publish_fleet(registry, workdir, 1)
    cache = workdir / "cache"
    run, rep = batch(
        cli, workdir, "first", cache, batch_file(workdir / "one.yaml", [src], "esgz"), "--cache-max-size", "0"
    )
    assert trimmed(run)["evicted"] == 3 and not entries(cache)
    consistent(cache)
    oracle.check_image(f"{registry.host}/app0:esgz")
    assert outcomes(rep) == {"converted": 3}


def test_this_runs_entries_go_last(cli: Cli, registry: RegistryServer, workdir: Path) -> None:
    """Even when another process used the others since."""
    (src,) = publish_fleet(registry, workdir, 1)
    cache = workdir / "cache"
    _, rep = batch(cli, workdir, "first", cache, batch_file(workdir / "one.yaml", [src], "esgz"))
    layers = source_layers(registry, "app0:src")
    (job,) = rep["jobs"]
    source_of = {la["digest"]: layers[la["source"]] for la in job["layers"]}
    docs = [json.loads(p.read_text()) for p in sorted((cache / "keys").glob("*.json"))]
    sizes = entries(cache)
    with LayerCache(cache) as ours:
        mine = docs[0]["desc"]["digest"]
        assert ours.lookup(docs[0]["key"], source_of[mine], CancelToken()) is not None
        with LayerCache(cache) as theirs:  # uses the other two after us
            for doc in docs[1:]:
                assert theirs.lookup(doc["key"], source_of[doc["desc"]["digest"]], CancelToken()) is not None
        assert ours.trim(sizes[mine]).entries == 2
    assert set(entries(cache)) == {mine}


def test_batches_sharing_a_directory_while_one_trims_it_to_nothing(
    cli: Cli, registry: RegistryServer, workdir: Path, oracle: Oracle
) -> None:
    """Real processes, however they interleave: every run succeeds with the images of a run without
    cache, and none finds a half-evicted entry (the deterministic case is the test above)."""
    sources = publish_fleet(registry, workdir, 4)
    cache = workdir / "cache"
    plain = workdir / "plain.json"
    cli("batch", "--report", str(plain), str(batch_file(workdir / "plain.yaml", sources, "plain")))
    file = batch_file(workdir / "batch.yaml", sources, "esgz")
    batch(cli, workdir, "warm", cache, file)
    procs = []
    for i in range(4):
        trim = ["--cache-max-size", "0"] if i % 2 else []
        args = ["--log-format", "json", "batch", "--cache-dir", str(cache), *trim]
        rep = workdir / f"run{i}.json"
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "ctr_remote", *args, "--report", str(rep), str(file)],
                env=cli.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        assert UNUSABLE not in err and "Traceback" not in err
    for i in range(4):
        assert digests(report(workdir / f"run{i}.json")) == digests(report(plain))
    assert not list((cache / "runs").iterdir()) and not list(cli.tmpdir.iterdir())
    oracle.check_image(f"{registry.host}/app3:esgz")


def test_leftovers_of_dead_writers_are_evicted_by_age(
    cli: Cli, registry: RegistryServer, workdir: Path
) -> None:
    """A blob no key file names (its writer died before the key file) and a key file that does not
    parse are entries like others: old ones go before the entries in use."""
    (src,) = publish_fleet(registry, workdir, 1)
    cache = workdir / "cache"
    batch(cli, workdir, "first", cache, batch_file(workdir / "one.yaml", [src], "esgz"))
    kept = entries(cache)
    orphan, garbage = cache / "blobs" / ("ab" * 32), cache / "keys" / ("cd" * 32 + ".json")
    orphan.write_bytes(b"x" * 1000)
    garbage.write_text("{torn")
    for path in (orphan, garbage):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    with LayerCache(cache) as c:
        t = c.trim(sum(kept.values()))
    assert (t.entries, t.freed, t.size) == (2, 1000 + len("{torn"), sum(kept.values()))
    assert entries(cache) == kept and not orphan.exists() and not garbage.exists()
