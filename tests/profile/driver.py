"""Runs `profile()` in its own process, as the CLI would, so tests can signal it and give it a terminal.

    python -m tests.profile.driver SPEC.json
SPEC: {"layers": [...], "config": {...}, "workload": {Workload fields}, "workdir": ..., "result": ...}
The result is written as JSON to SPEC["result"]. Exit status: 0, 1 (ProfileError, one line on
stderr as the CLI prints it), 130 (KeyboardInterrupt).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from ctr_remote.errors import CtrRemoteError
from ctr_remote.profile import Mount, NetworkMode, Workload, profile
from ctr_remote.profile.workload import CniConfig, RecorderKind


def workload_of(fields: dict) -> Workload:
    fields = dict(fields)
    for key in ("entrypoint", "args"):
        if fields.get(key) is not None:
            fields[key] = tuple(fields[key])
    if "env" in fields:
        fields["env"] = tuple(fields["env"])
    if "mounts" in fields:
        fields["mounts"] = tuple(
            Mount(**{**m, "options": tuple(m.get("options", ()))}) for m in fields["mounts"]
        )
    if "add_hosts" in fields:
        fields["add_hosts"] = tuple(tuple(h) for h in fields["add_hosts"])
    if "network" in fields:
        fields["network"] = NetworkMode(fields["network"])
    if "recorder" in fields:
        fields["recorder"] = RecorderKind(fields["recorder"])
    if "cni" in fields:
        fields["cni"] = CniConfig(Path(fields["cni"]["conf_dir"]), Path(fields["cni"]["plugin_dir"]))
    return Workload(**fields)


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    try:
        result = profile(
            [Path(p) for p in spec["layers"]],
            spec["config"],
            workload_of(spec.get("workload", {})),
            workdir=Path(spec["workdir"]),
        )
    except CtrRemoteError as e:
        print(f"ctr-remote: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    Path(spec["result"]).write_text(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
