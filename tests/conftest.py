"""Fixtures every test area shares: the upstream Go eStargz reader as the conformance oracle."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ORACLE = Path(os.environ.get("ESTARGZ_CHECK", ROOT / "build" / "estargz-check"))
ORACLE_GEN = Path(os.environ.get("ESTARGZ_CHECK_GEN", str(ORACLE) + "-gen"))


@dataclass
class OracleReport:
    ok: bool
    report: dict[str, Any]
    stderr: str

    @property
    def warnings(self) -> list[str]:
        return list(self.report.get("warnings") or [])


class Oracle:
    """Runs `estargz-check`, the upstream Go reader, on blobs and images."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary

    def _run(self, args: list[str]) -> OracleReport:
        p = subprocess.run([str(self.binary), *args], capture_output=True, text=True, timeout=600)
        if p.returncode == 2:
            raise AssertionError(f"estargz-check usage error: {p.stderr}")
        report = json.loads(p.stdout) if p.stdout.strip() else {}
        return OracleReport(ok=p.returncode == 0, report=report, stderr=p.stderr)

    def blob(self, path: Path, toc_digest: str | None = None, strict: bool = True) -> OracleReport:
        args = ["blob", str(path)]
        if toc_digest:
            args += ["--toc-digest", toc_digest]
        if strict:
            args.append("--strict")
        return self._run(args)

    def image(self, ref: str | Path, strict: bool = True) -> OracleReport:
        args = ["image", str(ref)]
        if strict:
            args.append("--strict")
        return self._run(args)

    def check_blob(self, path: Path, toc_digest: str, allowed_warnings: tuple[str, ...] = ()) -> dict:
        """Assert the blob passes; warnings fail unless each contains one of `allowed_warnings`."""
        r = self.blob(path, toc_digest, strict=False)
        assert r.ok, f"estargz-check rejected {path}: {r.stderr} {r.report.get('errors')}"
        unexpected = [w for w in r.warnings if not any(a in w for a in allowed_warnings)]
        assert not unexpected, f"estargz-check warnings on {path}: {unexpected}"
        return r.report

    def check_image(self, ref: str | Path, allowed_warnings: tuple[str, ...] = ()) -> dict:
        r = self.image(ref, strict=False)
        assert r.ok, f"estargz-check rejected image {ref}: {r.stderr} {r.report.get('errors')}"
        unexpected = [w for w in r.warnings if not any(a in w for a in allowed_warnings)]
        assert not unexpected, f"estargz-check warnings on {ref}: {unexpected}"
        return r.report


@pytest.fixture(scope="session")
def oracle() -> Oracle:
    if not ORACLE.exists():
        pytest.fail(f"{ORACLE} missing: run `make install` (builds the Go oracle)")
    return Oracle(ORACLE)


@pytest.fixture(scope="session")
def oracle_gen() -> Path:
    if not ORACLE_GEN.exists():
        pytest.fail(f"{ORACLE_GEN} missing: run `make install` (builds the Go generator)")
    return ORACLE_GEN
