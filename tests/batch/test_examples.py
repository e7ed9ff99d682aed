"""The shipped CI examples: valid YAML, the settings a shard needs, and commands that are valid
`ctr-remote batch` invocations whose shards together run the example file, each job once."""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from click.testing import CliRunner

from ctr_remote import log
from ctr_remote.cli import cli

EXAMPLES = Path(__file__).parents[2] / "examples" / "batch"
FLEET = EXAMPLES / "fleet.yaml"


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """The CLI configures logging onto CliRunner's stream, closed once it returns: undo that."""
    config, fmt = structlog.get_config(), log.current_format()
    yield
    structlog.configure(**config)
    log._format = fmt


def dry_run(argv: list[str], env: dict[str, str] | None = None) -> list[str]:
    """The jobs `argv` (a `ctr-remote ... batch ...` command line) would run: its --dry-run."""
    assert argv[0].endswith("ctr-remote"), argv
    args = [FLEET.as_posix() if a.endswith("fleet.yaml") else a for a in argv[1:]]
    at = args.index("batch") + 1
    result = CliRunner().invoke(cli, [*args[:at], "--dry-run", *args[at:]], env=env)
    assert result.exit_code == 0, (argv, result.output)
    return [line.split("\t")[0] for line in result.output.splitlines()]


def all_jobs() -> list[str]:
    return dry_run(["ctr-remote", "batch", "fleet.yaml"])


def load(name: str) -> Any:
    return yaml.safe_load((EXAMPLES / name).read_text())


def test_the_kubernetes_indexed_job() -> None:
    job = load("kubernetes-indexed-job.yaml")
    spec = job["spec"]
    assert (job["kind"], spec["completionMode"]) == ("Job", "Indexed")
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["securityContext"]["privileged"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert volumes["fuse"]["hostPath"]["path"] == "/dev/fuse" == mounts["fuse"]
    assert volumes["docker-config"]["secret"]["items"] == [{"key": "config.json", "path": "config.json"}]
    assert {"name": "DOCKER_CONFIG", "value": mounts["docker-config"]} in container["env"]
    argv = [*container["command"], *container["args"]]
    count = spec["completions"]
    assert f"--shard=/{count}" in argv  # the index comes from the pod's JOB_COMPLETION_INDEX
    shards = [dry_run(argv, {"JOB_COMPLETION_INDEX": str(i)}) for i in range(count)]
    assert Counter(n for s in shards for n in s) == Counter(all_jobs())


def test_the_github_actions_matrix() -> None:
    job = load("github-actions.yml")["jobs"]["convert"]
    values = job["strategy"]["matrix"]["shard"]
    (run,) = [s["run"] for s in job["steps"] if "batch" in s.get("run", "")]
    shards = []
    for v in values:
        line = shlex.split(run.replace("${{ matrix.shard }}", str(v)))
        shards.append(dry_run(line[line.index("--preserve-env=DOCKER_CONFIG") + 1 :]))
    assert f"--shard ${{{{ matrix.shard }}}}/{len(values)} " in run
    assert "DOCKER_CONFIG" in job["env"]  # what login-action writes to and sudo passes on
    assert Counter(n for s in shards for n in s) == Counter(all_jobs())


def test_the_gitlab_parallel_matrix() -> None:
    job = load("gitlab-ci.yml")["convert-estargz"]
    (entry,) = job["parallel"]["matrix"]
    (script,) = [s for s in job["script"] if "batch" in s]
    shards = [dry_run(shlex.split(script.replace("$SHARD", v))) for v in entry["SHARD"]]
    assert f'--shard "$SHARD/{len(entry["SHARD"])}"' in script
    assert Counter(n for s in shards for n in s) == Counter(all_jobs())
