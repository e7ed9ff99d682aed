"""Fixtures every test area shares: the upstream Go eStargz reader as the conformance oracle."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ORACLE = Path(os.environ.get("ESTARGZ_CHECK", ROOT / "build" / "estargz-check"))
ORACLE_GEN = Path(os.environ.get("ESTARGZ_CHECK_GEN", str(ORACLE) + "-gen"))
# The same oracle built against upstream v0.12, the older reader still deployed: our default output
# must stay readable by it.
ORACLE_V012 = Path(os.environ.get("ESTARGZ_CHECK_V012", str(ORACLE) + "-v0.12"))


@dataclass
class OracleReport:
    ok: bool
    report: dict[str, Any]
    stderr: str

    @property
    def warnings(self) -> list[str]:
        return list(self.report.get("warnings") or [])


class Oracle:
    """Runs `estargz-check` (tests/oracle, on upstream's Go reader v0.14.3) on blobs and images, and
    the same checker built on v0.12 (`older`) where our output must also pass the older reader."""

    def __init__(self, binary: Path, older: Path | None = None) -> None:
        self.binary = binary
        self.older = older

    def _run(self, args: list[str], binary: Path | None = None) -> OracleReport:
        p = subprocess.run([str(binary or self.binary), *args], capture_output=True, text=True, timeout=600)
        if p.returncode == 2:
            raise AssertionError(f"estargz-check usage error: {p.stderr}")
        report = json.loads(p.stdout) if p.stdout.strip() else {}
        return OracleReport(ok=p.returncode == 0, report=report, stderr=p.stderr)

    def blob(
        self,
        path: Path,
        toc_digest: str | None = None,
        strict: bool = True,
        binary: Path | None = None,
        external_toc: Path | None = None,
    ) -> OracleReport:
        args = ["blob", str(path)]
        if toc_digest:
            args += ["--toc-digest", toc_digest]
        if external_toc:
            args += ["--external-toc", str(external_toc)]
        if strict:
            args.append("--strict")
        return self._run(args, binary)

    def image(self, ref: str | Path, strict: bool = True, binary: Path | None = None) -> OracleReport:
        args = ["image", str(ref)]
        if strict:
            args.append("--strict")
        return self._run(args, binary)

    def check_blob(
        self,
        path: Path,
        toc_digest: str,
        allowed_warnings: tuple[str, ...] = (),
        older_reader: bool = True,
        external_toc: Path | None = None,
    ) -> dict:
        """Assert the blob passes; warnings fail unless each contains one of `allowed_warnings`.
        Unless `older_reader` is False (a format only v0.14.3 reads, e.g. innerOffset or an external
        TOC, given as the TOC blob's path), the blob must pass the v0.12 build of the oracle as well."""
        binaries = [self.binary] + ([self.older] if older_reader and self.older else [])
        reports = []
        for binary in binaries:
            r = self.blob(path, toc_digest, strict=False, binary=binary, external_toc=external_toc)
            lib = r.report.get("library", binary.name)
            assert r.ok, f"estargz-check ({lib}) rejected {path}: {r.stderr} {r.report.get('errors')}"
            unexpected = [w for w in r.warnings if not any(a in w for a in allowed_warnings)]
            assert not unexpected, f"estargz-check ({lib}) warnings on {path}: {unexpected}"
            reports.append(r.report)
        return reports[0]

    def check_image(
        self,
        ref: str | Path,
        allowed_warnings: tuple[str, ...] = (),
        all_estargz: bool = True,
        older_reader: bool = True,
    ) -> dict:
        """Assert the image passes at every level: the image, each manifest, each layer and its blob
        (the oracle runs with `--strict` unless warnings are allowed, and every level's own verdict
        and warnings are read here too, not only what the oracle copies to the top). A warning
        anywhere fails unless it contains one of `allowed_warnings`. Unless `all_estargz` is False,
        every layer must be eStargz (a plain gzip layer is a valid image, but not our output).
        Unless `older_reader` is False, the v0.12 build must pass it too. Returns v0.14.3's report."""
        binaries = [self.binary] + ([self.older] if older_reader and self.older else [])
        reports = []
        for binary in binaries:
            r = self.image(ref, strict=not allowed_warnings, binary=binary)
            lib = r.report.get("library", binary.name)
            failed, unexpected = [], []
            for where, level in _levels(r.report):
                if not level.get("ok", False):
                    failed.append(f"{where}: {level.get('error') or level.get('errors')}")
                unexpected += [
                    f"{where}: {w}"
                    for w in level.get("warnings") or []
                    if not any(a in w for a in allowed_warnings)
                ]
            assert r.ok and not failed, f"estargz-check ({lib}) rejected image {ref}: {r.stderr} {failed}"
            assert not unexpected, f"estargz-check ({lib}) warnings on {ref}: {unexpected}"
            layers = r.report["layers"]
            assert layers == sum(len(m["layers"]) for m in r.report["manifests"]) > 0, r.report
            if all_estargz:
                assert r.report["estargz_layers"] == layers, f"{ref}: not every layer is eStargz: {r.report}"
            unread = [
                f"manifest {m['digest']} layer {la['index']}"
                for m in r.report["manifests"]
                for la in m["layers"]
                if la.get("toc_digest_annotation") and la.get("blob") is None
            ]
            assert not unread, f"estargz-check ({lib}) did not check the blob of eStargz layers: {unread}"
            reports.append(r.report)
        return reports[0]

    def check_batch(self, report: dict[str, Any], **kwargs: Any) -> list[dict]:
        """check_image on every image a `ctr-remote batch` run wrote: each job of its --report whose
        status is ok, by its target (a registry or local:// reference). Returns the reports."""
        written = [job for job in report["jobs"] if job["status"] == "ok"]
        assert written, f"the batch wrote no image: {report}"
        return [self.check_image(job["target"], **kwargs) for job in written]


def _levels(report: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every level of an image report, each with where it is."""
    yield "image", report
    for m in report.get("manifests") or []:
        where = f"manifest {m.get('digest')}"
        yield where, m
        for layer in m.get("layers") or []:
            yield f"{where} layer {layer.get('index')}", layer
            if layer.get("blob") is not None:
                yield f"{where} layer {layer.get('index')} blob", layer["blob"]


# Fixtures that start real services (a registry, the lazy-pull stack, CNI networks): no `unit` test
# may use them, so that `pytest -m unit` stays runnable without root or services.
SERVICE_FIXTURES = {"registry", "registry_factory", "fault_proxy", "stack", "playground"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = set(callspec.params) if callspec else set()  # a parameter may share a fixture's name
        services = SERVICE_FIXTURES & (set(getattr(item, "fixturenames", ())) - params)
        if item.get_closest_marker("unit") and services:
            raise pytest.UsageError(f"{item.nodeid} is marked unit but uses {sorted(services)}")


@pytest.fixture(scope="session")
def oracle() -> Oracle:
    for binary in (ORACLE, ORACLE_V012):
        if not binary.exists():
            pytest.fail(f"{binary} missing: run `make install` (builds the Go oracle)")
    return Oracle(ORACLE, ORACLE_V012)


@pytest.fixture(scope="session")
def oracle_gen() -> Path:
    if not ORACLE_GEN.exists():
        pytest.fail(f"{ORACLE_GEN} missing: run `make install` (builds the Go generator)")
    return ORACLE_GEN
