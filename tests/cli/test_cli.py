import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ctr_remote", *args], capture_output=True, text=True)


def test_version_and_help() -> None:
    p = run("--version")
    assert p.returncode == 0 and "ctr-remote" in p.stdout
    p = run("--help")
    assert p.returncode == 0 and "image" in p.stdout


def test_image_aliases() -> None:
    for alias in ("image", "images", "i"):
        p = run(alias, "--help")
        assert p.returncode == 0, p.stderr
        assert "Manage images" in p.stdout


def test_unknown_command_is_one_line_error() -> None:
    p = run("nosuch")
    assert p.returncode == 2 and p.stdout == ""
    assert len(p.stderr.splitlines()) == 1 and p.stderr.endswith("\n"), p.stderr
    assert "No such command 'nosuch'" in p.stderr
