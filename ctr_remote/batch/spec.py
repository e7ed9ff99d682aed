"""The batch file: jobs, each an `optimize` or a `convert` with the commands' own option names, and
defaults for all of them. Parsed whole, before anything runs, by the commands' own click parsers:
each job becomes the argument list a user would type (`source: x` and `oci: true` become
`x ... --oci`), so a value means exactly what the flag means and is checked by the same code.

    defaults:            # every job's keys, unless the job sets them (a key only one kind of
      plain_http: true   # job has applies to jobs of that kind)
      oci: true
    jobs:
      - convert: {source: reg/app:v1, target: reg/app:v1-esgz, estargz: true}
      - optimize:
          name: web      # the job's identity (report, shards); default: its target
          source: reg/web:v1
          target: reg/web:v1-esgz
          args: ["--port", "80"]   # a list, or the flag's JSON string
          period: 10
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from ctr_remote.cli.convert import convert_command
from ctr_remote.cli.convert import parse as parse_convert
from ctr_remote.cli.optimize import optimize_command
from ctr_remote.cli.optimize import parse as parse_optimize
from ctr_remote.cli.types import reference
from ctr_remote.errors import CtrRemoteError, UsageError
from ctr_remote.options import OptimizeOptions
from ctr_remote.profile.workload import Workload

KINDS: dict[str, click.Command] = {"optimize": optimize_command, "convert": convert_command}
# Keys that are not flags; `record_in` is convert's --estargz-record-in (--zstdchunked-record-in
# with zstdchunked: true).
_OWN_KEYS = {"name", "source", "target"}
_PATH_KEYS = {"prefetch_list", "record_out", "env_file", "estargz_record_in", "zstdchunked_record_in"}
# Flags that need a terminal or a human: no place in a batch.
_INTERACTIVE = {"terminal", "stdin", "wait_on_signal"}


class BatchFileError(UsageError):
    """A batch file that cannot run: one line naming the file, the job and the key (exit 2)."""


@dataclass(frozen=True)
class Job:
    index: int  # position in the file, from 0
    name: str  # identity: the report's key and what the shard assignment hashes
    kind: str  # "optimize" or "convert"
    options: OptimizeOptions
    workload: Workload

    @property
    def source(self) -> str:
        return str(self.options.source)

    @property
    def target(self) -> str:
        return str(self.options.target)


def load(path: Path) -> list[Job]:
    """Every job of the file, validated; BatchFileError on the first problem."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise BatchFileError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise BatchFileError(f"{path}: not valid YAML{line}: {getattr(e, 'problem', e)}") from None
    return parse(doc, path)


def parse(doc: Any, path: Path) -> list[Job]:
    if not isinstance(doc, Mapping):
        raise BatchFileError(f"{path}: want a mapping with `jobs` (and optionally `defaults`)")
    unknown = set(doc) - {"jobs", "defaults"}
    if unknown:
        raise BatchFileError(f"{path}: unknown top-level key {sorted(unknown)[0]!r} (want jobs, defaults)")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise BatchFileError(f"{path}: defaults: want a mapping of option names to values")
    defaults = {_key(k): v for k, v in defaults.items()}
    for key in defaults:
        if key == "name" or not any(_known(kind, key) for kind in KINDS):
            raise BatchFileError(f"{path}: defaults: unknown key {key!r}")
    raw_jobs = doc.get("jobs")
    if not isinstance(raw_jobs, list) or not raw_jobs:
        raise BatchFileError(f"{path}: jobs: want a non-empty list")
    jobs = [_job(i, raw, defaults, path) for i, raw in enumerate(raw_jobs)]
    _check_unique(jobs, path)
    return jobs


def _key(key: object) -> str:
    return str(key).replace("-", "_")


def _known(kind: str, key: str) -> bool:
    if key in _OWN_KEYS or (key == "record_in" and kind == "convert"):
        return True
    return any(p.name == key for p in KINDS[kind].params if isinstance(p, click.Option))


def _job(index: int, raw: Any, defaults: Mapping[str, Any], path: Path) -> Job:
    where = f"{path}: job {index + 1}"
    if not isinstance(raw, Mapping) or len(raw) != 1 or next(iter(raw)) not in KINDS:
        raise BatchFileError(f"{where}: want `optimize: {{...}}` or `convert: {{...}}`")
    kind, body = next(iter(raw.items()))
    if not isinstance(body, Mapping):
        raise BatchFileError(f"{where}: {kind}: want a mapping of option names to values")
    own = {_key(k): v for k, v in body.items()}
    name = str(own.get("name") or own.get("target") or "")
    if name:
        where += f" ({name})"
    for key in own:
        if not _known(kind, key):
            raise BatchFileError(f"{where}: unknown key {key!r} for {kind}")
    values = {k: v for k, v in defaults.items() if _known(kind, k)} | own
    for key in ("source", "target"):
        if not isinstance(values.get(key), str) or not values[key]:
            raise BatchFileError(f"{where}: {key}: required, an image reference")
    if kind == "convert" and "record_in" in values:
        values["zstdchunked_record_in" if values.get("zstdchunked") else "estargz_record_in"] = values.pop(
            "record_in"
        )
    for key in _INTERACTIVE:
        if values.get(key):
            raise BatchFileError(f"{where}: {key}: not available in a batch (nothing is interactive)")
    command = KINDS[kind]
    try:
        argv = []
        for key, value in values.items():
            if key not in _OWN_KEYS:
                argv += _flag(command, key, value, path.parent)
        # After `--`, a reference that starts with `-` is still an argument.
        ctx = command.make_context(kind, [*argv, "--", values["source"], values["target"]])
        params = dict(ctx.params)
        for key in ("source", "target"):
            try:
                reference(values[key], plain_http=params["plain_http"])
            except UsageError as e:
                raise _BadValue(key, str(e)) from None
        params.pop("source_ref"), params.pop("target_ref")
        if kind == "optimize":
            options, workload = parse_optimize(values["source"], values["target"], params)
        else:
            options, workload = parse_convert(values["source"], values["target"], params), Workload()
    except _BadValue as e:
        raise BatchFileError(f"{where}: {e.key}: {e.message}") from None
    except click.BadParameter as e:
        key = e.param.name if e.param is not None else str(e.param_hint or "").lstrip("-").replace("-", "_")
        raise BatchFileError(f"{where}: {key}: {e.message}") from None
    except click.UsageError as e:
        raise BatchFileError(f"{where}: {e.format_message()}") from None
    except CtrRemoteError as e:
        raise BatchFileError(f"{where}: {e}") from None
    return Job(index, name or str(options.target), kind, options, workload)


class _BadValue(Exception):
    def __init__(self, key: str, message: str) -> None:
        self.key, self.message = key, message


def _flag(command: click.Command, key: str, value: Any, base: Path) -> list[str]:
    """The command-line words for one key: a flag present or not, an option repeated per list item,
    a JSON array for --entrypoint/--args given as a list, a relative path from the batch file's
    directory."""
    option = next(p for p in command.params if isinstance(p, click.Option) and p.name == key)
    flag = max(option.opts, key=len)
    if option.is_flag:
        if not isinstance(value, bool):
            raise _BadValue(key, f"want true or false, not {value!r}")
        return [flag] if value else []
    if value is None:
        return []
    if key in ("entrypoint", "args") and isinstance(value, list):
        value = json.dumps(value)
    items = value if isinstance(value, list) and option.multiple else [value]
    words = []
    for item in items:
        if isinstance(item, (dict, list, bool)):
            raise _BadValue(key, f"want a {'list of ' if option.multiple else ''}scalar value, not {item!r}")
        text = str(item)
        if key in _PATH_KEYS and not Path(text).is_absolute() and not text.startswith("/dev/"):
            text = str(base / text)
        words += [flag, text]
    return words


def _check_unique(jobs: list[Job], path: Path) -> None:
    """Two jobs with one name would share a report entry and a shard; two with one target would
    race for its tag."""
    names: dict[str, Job] = {}
    targets: dict[str, Job] = {}
    for job in jobs:
        for seen, value, what in ((names, job.name, "name"), (targets, job.target, "target")):
            if value in seen:
                raise BatchFileError(
                    f"{path}: job {job.index + 1} ({job.name}): {what}: {value} is also job "
                    f"{seen[value].index + 1}'s"
                )
            seen[value] = job
