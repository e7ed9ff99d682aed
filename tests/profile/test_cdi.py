"""CDI devices (`--device`, `--gpus`): spec files read and resolved, their edits applied to the OCI spec
as the CDI specification says, and, with real runc and both recorders, a fake vendor's device node,
mount, env and createContainer hook in the container, the file the hook reads in the image recorded and
the files read through the injected mount not."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ctr_remote.profile import ProfileError, Workload
from ctr_remote.profile.cdi import (
    CdiError,
    apply,
    gpu_devices,
    parse_device,
    resolve,
)
from ctr_remote.profile.rootfs import User
from ctr_remote.profile.spec import Command, build_spec
from ctr_remote.profile.workload import Mount
from tests.helpers.images import LayerBuilder
from tests.profile.conftest import RECORDERS

PYTHON = os.path.realpath(sys.executable)

# The createContainer hook: runs in the container's mount namespace before pivot_root, finds the rootfs
# from the OCI state on stdin (bundle -> config.json -> root.path), reads a file of the image and a file
# under the injected mount, and writes what it saw to argv[1] (on the host, visible before pivot_root).
HOOK = """
import json, os, sys
state = json.load(sys.stdin)
with open(os.path.join(state["bundle"], "config.json")) as f:
    root = json.load(f)["root"]["path"]
root = os.path.join(state["bundle"], root)
with open(os.path.join(root, "etc/hook-input")) as f:
    image = f.read()
with open(os.path.join(root, "opt/vendor/lib/libfake.so")) as f:
    mounted = f.read()
with open(sys.argv[1], "w") as f:
    json.dump({"root": root, "image": image, "mounted": mounted, "env": os.environ.get("HOOK_ENV")}, f)
"""


def write_spec(directory: Path, name: str, spec: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(json.dumps(spec) if name.endswith(".json") else yaml.safe_dump(spec))
    return path


def vendor_spec(tmp_path: Path) -> dict[str, Any]:
    """vendor.test/fake: spec-wide an env var, a bind mount of a host library dir and the hook; dev0 is
    /dev/null's numbers at /dev/vendor/fake0, ctl is /dev/loop-control (a device runc denies unless
    allowed) at /dev/vendor/ctl."""
    lib = tmp_path / "vendor-lib"
    lib.mkdir(exist_ok=True)
    (lib / "libfake.so").write_text("from-host-lib\n")
    return {
        "cdiVersion": "0.6.0",
        "kind": "vendor.test/fake",
        "containerEdits": {
            "env": ["FAKE_VENDOR=1"],
            "mounts": [
                {
                    "hostPath": str(lib),
                    "containerPath": "/opt/vendor/lib",
                    "options": ["ro", "nosuid", "nodev", "bind"],
                }
            ],
            "hooks": [
                {
                    "hookName": "createContainer",
                    "path": PYTHON,
                    "args": ["python3", "-I", "-c", HOOK, str(tmp_path / "hook.json")],
                    "env": ["HOOK_ENV=from-cdi"],
                }
            ],
        },
        "devices": [
            {
                "name": "dev0",
                "containerEdits": {
                    "env": ["FAKE_DEVICE=dev0"],
                    "deviceNodes": [{"path": "/dev/vendor/fake0", "hostPath": "/dev/null"}],
                },
            },
            {
                "name": "ctl",
                "containerEdits": {
                    "deviceNodes": [{"path": "/dev/vendor/ctl", "hostPath": "/dev/loop-control"}]
                },
            },
        ],
    }


def app_layer(tmp_path: Path) -> Path:
    """The image's own copy of the library the mount hides, the hook's input and the app's data."""
    return (
        LayerBuilder()
        .file("etc/hook-input", b"hook-input-data\n")
        .file("opt/vendor/lib/libfake.so", b"from-the-image\n")
        .file("app/data", b"app-data\n")
        .symlink("bin/mknod", "busybox")
        .write(tmp_path / "app.tar")
    )


WORKLOAD = (
    "cat /app/data; cat /opt/vendor/lib/libfake.so; echo env=$FAKE_VENDOR,$FAKE_DEVICE; "
    "stat -c '%F %t:%T' /dev/vendor/fake0; echo x > /dev/vendor/fake0 && echo written; "
    "(exec 3<> /dev/vendor/ctl) && echo ctl-opened"
)


@pytest.mark.parametrize("recorder", RECORDERS)
def test_fake_vendor_device_mount_env_and_hook(run, capfd, tmp_path: Path) -> None:
    write_spec(tmp_path / "cdi", "vendor.yaml", vendor_spec(tmp_path))
    result = run(
        WORKLOAD,
        app_layer(tmp_path),
        devices=("vendor.test/fake=dev0", "vendor.test/fake=ctl"),
        cdi_spec_dirs=(tmp_path / "cdi",),
    )
    assert result.exit_code == 0
    assert capfd.readouterr().out.splitlines() == [
        "app-data",
        "from-host-lib",  # the mount, not the image's file below it
        "env=1,dev0",
        "character special file 1:3",
        "written",
        "ctl-opened",  # allowed in the device cgroup (see the next test)
    ]
    hook = json.loads((tmp_path / "hook.json").read_text())
    assert hook["image"] == "hook-input-data\n" and hook["mounted"] == "from-host-lib\n"
    assert hook["env"] == "from-cdi"
    assert Path(hook["root"]).name == "rootfs"  # the recorded overlay
    recorded = result.accessed[1]
    # What the hook read in the image is recorded, before anything the workload read...
    assert recorded.index("etc/hook-input") < recorded.index("app/data")
    # ...and nothing read through the injected mount, by the hook or the workload.
    assert not [p for p in recorded if p.startswith("opt/")]


@pytest.mark.parametrize("requested", [True, False])
def test_device_cgroup_allows_the_node_of_a_requested_device_only(
    run, capfd, tmp_path: Path, requested: bool
) -> None:
    """/dev/loop-control's numbers, made by hand: denied by the device cgroup, unless a requested CDI
    device has them."""
    write_spec(tmp_path / "cdi", "vendor.yaml", vendor_spec(tmp_path))
    run(
        "mknod /dev/by-hand c 10 237; (exec 3<> /dev/by-hand) 2>/dev/null && echo opened || echo denied",
        app_layer(tmp_path),
        devices=("vendor.test/fake=ctl",) if requested else (),
        cdi_spec_dirs=(tmp_path / "cdi",),
    )
    assert capfd.readouterr().out == ("opened\n" if requested else "denied\n")


@pytest.mark.parametrize("recorder", RECORDERS)
def test_gpus_all_means_every_nvidia_gpu(run, capfd, tmp_path: Path) -> None:
    """`--gpus all` against a spec that defines no `all` device: every device of nvidia.com/gpu."""
    write_spec(
        tmp_path / "cdi",
        "nvidia.json",
        {
            "cdiVersion": "0.5.0",
            "kind": "nvidia.com/gpu",
            "containerEdits": {"env": ["NVIDIA_VISIBLE_DEVICES=void"]},
            "devices": [
                {
                    "name": str(i),
                    "containerEdits": {"deviceNodes": [{"path": f"/dev/nvidia{i}", "hostPath": "/dev/null"}]},
                }
                for i in range(2)
            ],
        },
    )
    run(
        "ls /dev | grep nvidia; echo $NVIDIA_VISIBLE_DEVICES",
        devices=gpu_devices("all"),
        cdi_spec_dirs=(tmp_path / "cdi",),
    )
    assert capfd.readouterr().out.split() == ["nvidia0", "nvidia1", "void"]


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        ({"hooks": [{"hookName": "createContainer", "path": "/bin/false", "args": ["false"]}]}, "hook"),
        (
            {"mounts": [{"hostPath": "/no/such/dir", "containerPath": "/x", "options": ["bind"]}]},
            "/no/such/dir",
        ),
    ],
    ids=["failing-hook", "missing-mount-source"],
)
def test_a_resource_that_fails_at_run_time_is_one_line(
    run, tmp_path: Path, edits: dict[str, Any], message: str
) -> None:
    """The CDI spec's "Error Handling": a hook that fails, or a resource missing when the container is
    created, is surfaced (by the runtime, as one line)."""
    spec = {
        "cdiVersion": "0.3.0",
        "kind": "vendor.test/broken",
        "devices": [{"name": "x", "containerEdits": edits}],
    }
    write_spec(tmp_path / "cdi", "broken.json", spec)
    with pytest.raises(ProfileError, match="could not start the workload") as e:
        run("true", devices=("vendor.test/broken=x",), cdi_spec_dirs=(tmp_path / "cdi",))
    assert message in str(e.value) and "\n" not in str(e.value)


# ---- resolution and the OCI spec (no container) -----------------------------------------------------


def oci_spec(tmp_path: Path, uid: int = 0, mounts: tuple[Mount, ...] = ()) -> dict[str, Any]:
    command = Command(["/bin/true"], ["PATH=/bin", "KEEP=1", "FAKE_VENDOR=0"], "/", "")
    workload = Workload(mounts=mounts)
    return build_spec(
        command,
        User(uid, uid, ()),
        workload,
        rootfs=tmp_path,
        hosts=tmp_path,
        resolv_conf=tmp_path,
        hostname="h",
    )


def test_edits_applied_as_the_cdi_spec_says(tmp_path: Path) -> None:
    write_spec(tmp_path / "cdi", "vendor.yaml", vendor_spec(tmp_path))
    oci = oci_spec(tmp_path, uid=1000, mounts=(Mount("bind", str(tmp_path), "/opt/vendor/lib", ()),))
    apply(oci, resolve(["vendor.test/fake=dev0"], [tmp_path / "cdi"]))
    # env: an existing variable's value replaced in place, new ones appended
    assert oci["process"]["env"] == ["PATH=/bin", "KEEP=1", "FAKE_VENDOR=1", "FAKE_DEVICE=dev0"]
    # the node from the host's /dev/null, owned by the process's user, allowed rwm in the device cgroup
    null = os.stat("/dev/null")
    assert oci["linux"]["devices"] == [
        {
            "path": "/dev/vendor/fake0",
            "type": "c",
            "major": 1,
            "minor": 3,
            "fileMode": null.st_mode & 0o7777,
            "uid": 1000,
            "gid": 1000,
        }
    ]
    assert oci["linux"]["resources"]["devices"][-1] == {
        "allow": True,
        "type": "c",
        "major": 1,
        "minor": 3,
        "access": "rwm",
    }
    assert oci["linux"]["resources"]["devices"][0] == {"allow": False, "access": "rwm"}  # deny-all first
    # the CDI mount replaces the user's mount of the same destination; mounts are sorted by depth
    vendor = [m for m in oci["mounts"] if m["destination"] == "/opt/vendor/lib"]
    assert vendor == [
        {
            "destination": "/opt/vendor/lib",
            "source": str(tmp_path / "vendor-lib"),
            "options": ["ro", "nosuid", "nodev", "bind"],
        }
    ]
    depths = [m["destination"].count("/") for m in oci["mounts"]]
    assert depths == sorted(depths)
    hooks = oci["hooks"]["createContainer"]
    assert len(hooks) == 1 and hooks[0]["path"] == PYTHON and hooks[0]["env"] == ["HOOK_ENV=from-cdi"]


def test_node_fields_given_in_the_spec_and_other_edits(tmp_path: Path) -> None:
    spec = {
        "cdiVersion": "1.1.0",
        "kind": "vendor.test/full",
        "containerEdits": {
            "additionalGids": [0, 44, 44],
            "intelRdt": {"closID": "clos1", "schemata": ["L3:0=f"]},
        },
        "devices": [
            {
                "name": "a",
                "containerEdits": {
                    "deviceNodes": [
                        {
                            "path": "/dev/full-spec",
                            "type": "b",
                            "major": 7,
                            "minor": 9,
                            "fileMode": 0o600,
                            "permissions": "r",
                            "uid": 5,
                            "gid": 6,
                        },
                        {
                            "path": "/dev/no-access",
                            "type": "c",
                            "major": 1,
                            "minor": 3,
                            "permissions": "none",
                        },
                    ],
                    "netDevices": [{"hostInterfaceName": "eth9", "name": "net0"}],
                    "hooks": [
                        {"hookName": "poststop", "path": "/bin/true", "timeout": 5},
                        {"hookName": "createRuntime", "path": "/bin/true"},
                    ],
                },
            }
        ],
    }
    write_spec(tmp_path / "cdi", "full.json", spec)
    oci = oci_spec(tmp_path)
    apply(oci, resolve(["vendor.test/full=a"], [tmp_path / "cdi"]))
    assert oci["linux"]["devices"] == [
        {
            "path": "/dev/full-spec",
            "type": "b",
            "major": 7,
            "minor": 9,
            "fileMode": 0o600,
            "uid": 5,
            "gid": 6,
        },
        {"path": "/dev/no-access", "type": "c", "major": 1, "minor": 3},
    ]
    assert oci["linux"]["resources"]["devices"][1:] == [
        {"allow": True, "type": "b", "major": 7, "minor": 9, "access": "r"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": ""},
    ]
    assert oci["linux"]["netDevices"] == {"eth9": {"name": "net0"}}
    assert oci["linux"]["intelRdt"] == {"closID": "clos1", "schemata": ["L3:0=f"]}
    assert oci["process"]["user"]["additionalGids"] == [44]
    assert oci["hooks"] == {
        "poststop": [{"path": "/bin/true", "timeout": 5}],
        "createRuntime": [{"path": "/bin/true"}],
    }


def gpu_spec(names: list[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "cdiVersion": "0.5.0",
        "kind": "nvidia.com/gpu",
        "containerEdits": {"env": ["SPEC_WIDE=1"]},
        "devices": [{"name": n, "containerEdits": {"env": [f"GPU_{n.upper()}=1"]}} for n in names],
        **(extra or {}),
    }


def env_of(names: list[str], dirs: list[Path]) -> tuple[str, ...]:
    return resolve(names, dirs).env


def test_gpus_flag_names(tmp_path: Path) -> None:
    assert gpu_devices("all") == ("nvidia.com/gpu=all",)
    assert gpu_devices("0,1") == ("nvidia.com/gpu=0", "nvidia.com/gpu=1")
    assert gpu_devices("0, 1,0") == ("nvidia.com/gpu=0", "nvidia.com/gpu=1")
    for bad in ("", "0,,1", "a b", "-1"):
        with pytest.raises(ValueError, match="neither 'all' nor"):
            gpu_devices(bad)
    for bad in ("nvidia.com/gpu", "gpu=0", "nvidia.com/=0", "1vendor/gpu=0", "vendor/gpu=0/"):
        with pytest.raises(ValueError):
            parse_device(bad)


def test_all_is_the_defined_device_else_every_device_of_the_kind(tmp_path: Path) -> None:
    d = tmp_path / "cdi"
    write_spec(d, "nvidia.yaml", gpu_spec(["0", "1"]))
    assert env_of(["nvidia.com/gpu=all"], [d]) == ("SPEC_WIDE=1", "GPU_0=1", "GPU_1=1")
    assert env_of(["nvidia.com/gpu=1", "nvidia.com/gpu=1"], [d]) == ("SPEC_WIDE=1", "GPU_1=1")
    write_spec(d, "nvidia.yaml", gpu_spec(["0", "1", "all"]))
    assert env_of(["nvidia.com/gpu=all"], [d]) == ("SPEC_WIDE=1", "GPU_ALL=1")


def test_a_later_directory_has_priority_and_one_priority_conflicts(tmp_path: Path) -> None:
    low, high = tmp_path / "etc", tmp_path / "run"
    write_spec(low, "a.yaml", gpu_spec(["0", "1"]))
    write_spec(high, "b.json", gpu_spec(["0"], {"containerEdits": {"env": ["FROM=run"]}}))
    assert env_of(["nvidia.com/gpu=0"], [low, high]) == ("FROM=run", "GPU_0=1")
    assert env_of(["nvidia.com/gpu=1"], [low, high]) == ("SPEC_WIDE=1", "GPU_1=1")
    write_spec(high, "c.yaml", gpu_spec(["0"]))
    with pytest.raises(
        CdiError, match=f"nvidia.com/gpu=0 is defined in both {high}/b.json and {high}/c.yaml"
    ):
        resolve(["nvidia.com/gpu=0"], [low, high])


def test_unknown_device_names_it_and_the_directories(tmp_path: Path) -> None:
    d = tmp_path / "cdi"
    write_spec(d, "nvidia.yaml", gpu_spec(["0"]))
    for name in ("nvidia.com/gpu=7", "vendor.test/none=all"):
        with pytest.raises(CdiError) as e:
            resolve([name], [d, tmp_path / "missing"])
        assert (
            str(e.value) == f"unknown CDI device {name} (CDI specs searched in {d}, {tmp_path / 'missing'})"
        )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("cdiVersion: [", "while parsing"),
        ("[]", "the spec is not an object"),
        ('{"cdiVersion": "0.3.0", "kind": "v.test/c", "devices": [], "extra": 1}', "unknown field 'extra'"),
        ('{"cdiVersion": "9.9.9", "kind": "v.test/c", "devices": []}', "unknown cdiVersion"),
        ('{"cdiVersion": "0.3.0", "kind": "nokind", "devices": [{"name": "a"}]}', "kind 'nokind'"),
        ('{"cdiVersion": "0.3.0", "kind": "v.test/c", "devices": []}', "defines no devices"),
        ('{"cdiVersion": "0.3.0", "kind": "v.test/c", "devices": [{"name": "a"}]}', "has no containerEdits"),
        (
            '{"cdiVersion": "0.3.0", "kind": "v.test/c", "devices": [{"name": "0", "containerEdits": '
            '{"env": ["A=1"]}}]}',
            "cdiVersion 0.3.0 is too old for the fields it uses (they need 0.5.0)",
        ),
        (
            '{"cdiVersion": "0.3.0", "kind": "v.test/c", "devices": [{"name": "a", "containerEdits": '
            '{"hooks": [{"hookName": "onBoot", "path": "/x"}]}}]}',
            "hookName 'onBoot'",
        ),
        (
            '{"cdiVersion": "0.3.0", "kind": "v.test/c", "devices": [{"name": "a", "containerEdits": '
            '{"deviceNodes": [{"path": "/dev/x", "major": "1"}]}}]}',
            "major is not an int",
        ),
        (
            '{"cdiVersion": "0.3.0", "kind": "v.test/c", "devices": [{"name": "a", "containerEdits": '
            '{"env": ["NOVALUE"]}}]}',
            "is not NAME=VALUE",
        ),
    ],
)
def test_malformed_spec_is_one_line_naming_the_file(tmp_path: Path, content: str, message: str) -> None:
    d = tmp_path / "cdi"
    d.mkdir()
    (d / "bad.yaml").write_text(content)
    with pytest.raises(CdiError) as e:
        resolve(["v.test/c=a"], [d])
    assert str(e.value).startswith(f"malformed CDI spec {d / 'bad.yaml'}: ")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_files_that_are_not_specs_are_ignored_and_missing_host_nodes_refused(tmp_path: Path) -> None:
    d = tmp_path / "cdi"
    (d / "sub.yaml").mkdir(parents=True)
    (d / "README").write_text("not a spec")
    spec = {
        "cdiVersion": "0.3.0",
        "kind": "v.test/c",
        "devices": [{"name": "a", "containerEdits": {"deviceNodes": [{"path": "/dev/no-such-node"}]}}],
    }
    write_spec(d, "c.yaml", spec)
    with pytest.raises(
        CdiError, match="CDI device node /dev/no-such-node: cannot stat /dev/no-such-node on the host"
    ):
        resolve(["v.test/c=a"], [d])
