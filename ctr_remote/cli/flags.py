"""Parsers for the workload flags whose values have a syntax of their own (upstream-compatible)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import click

from ctr_remote.profile.workload import Mount

_MOUNT_KEYS = {
    "type": "type",
    "source": "source",
    "src": "source",
    "destination": "destination",
    "dst": "destination",
    "target": "destination",
    "options": "options",
}


def json_array(flag: str, value: str | None) -> tuple[str, ...] | None:
    """`--entrypoint` / `--args`: a JSON array of strings."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not a JSON array: {e.msg}", param_hint=flag) from None
    if not isinstance(parsed, list) or not all(isinstance(a, str) for a in parsed):
        raise click.BadParameter(
            'must be a JSON array of strings, e.g. \'["/bin/sh", "-c"]\'', param_hint=flag
        )
    return tuple(parsed)


def cdi_devices(gpus: str | None, devices: Iterable[str]) -> tuple[str, ...]:
    """`--gpus` then `--device`: qualified CDI device names, each once."""
    from ctr_remote.profile.cdi import gpu_devices, parse_device

    names: list[str] = []
    try:
        if gpus is not None:
            names += gpu_devices(gpus)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--gpus") from None
    for value in devices:
        try:
            names.append(parse_device(value))
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--device") from None
    return tuple(dict.fromkeys(names))


def mount(value: str) -> Mount:
    """`type=bind,source=/a,destination=/b,options=rbind:ro` (ctr's syntax)."""
    fields: dict[str, str] = {}
    for part in value.split(","):
        key, sep, val = part.partition("=")
        norm = _MOUNT_KEYS.get(key.strip())
        if not sep or norm is None:
            raise click.BadParameter(
                f"{value!r}: unknown field {key!r} (want type, source, destination, options)",
                param_hint="--mount",
            )
        fields[norm] = val
    dest = fields.get("destination", "")
    if not dest.startswith("/"):
        raise click.BadParameter(f"{value!r}: destination must be an absolute path", param_hint="--mount")
    options = tuple(o for o in fields.get("options", "").split(":") if o)
    return Mount(
        type=fields.get("type", "none"), source=fields.get("source", ""), destination=dest, options=options
    )


def csv(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


def add_hosts(value: str | None) -> tuple[tuple[str, str], ...]:
    """`host:IP,host2:IP2`; split at the first colon so IPv6 addresses survive."""
    out = []
    for item in csv(value):
        host, sep, ip = item.partition(":")
        if not sep or not host or not ip:
            raise click.BadParameter(f"{item!r}: want host:IP", param_hint="--add-hosts")
        out.append((host, ip))
    return tuple(out)


def env_pair(flag: str, value: str) -> str:
    key, sep, _ = value.partition("=")
    if not key or not sep:
        raise click.BadParameter(f"{value!r}: want KEY=VALUE", param_hint=flag)
    return value


def env_file(path: Path) -> tuple[str, ...]:
    """Docker's --env-file syntax: KEY=VALUE per line, `#` comments; a bare KEY takes the host's value."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise click.BadParameter(f"cannot read {path}: {e.strerror}", param_hint="--env-file") from None
    return tuple(_env_lines(lines))


def _env_lines(lines: Iterable[str]) -> Iterable[str]:
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "=" in line:
            yield env_pair("--env-file", line)
        elif line in os.environ:
            yield f"{line}={os.environ[line]}"
