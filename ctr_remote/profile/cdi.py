"""CDI (Container Device Interface) devices for the profiling container: `--device vendor.com/class=name`
and `--gpus`, resolved from CDI spec files and applied to the OCI runtime spec.

Follows the CDI specification v1.1.0 (accepting spec files of every released version, 0.1.0 to 1.1.0)
and its reference implementation, tags.cncf.io/container-device-interface (pkg/cdi), which containerd,
nerdctl, podman and upstream's `ctr-remote optimize --gpus` use:

- spec files are the `*.json` and `*.yaml` files directly in the spec directories (YAML or JSON, unknown
  fields refused); a directory later in the list has priority over an earlier one (`/var/run/cdi`,
  generated, over `/etc/cdi`); one device defined twice at the same priority is a conflict;
- a spec's own `containerEdits` are applied once if any of its devices is requested, each requested
  device's after its spec's, in the order requested, all merged and then applied at once;
- `env` replaces the value of a variable already set and appends the others; a device node is filled
  in from its host node (type, numbers, mode), owned by the process's user when it gives none, replaces
  a node of the same path, and char/block nodes are allowed in the device cgroup (`rwm` unless given,
  `none` for no access); a mount replaces a mount of the same destination, and then all mounts are
  sorted by depth (stable), parents first; hooks are appended to their OCI hook list; `additionalGids`
  are added (0 ignored); `intelRdt` and `netDevices` are set as given.

`NAME=all` is the device a spec defines under that name (NVIDIA's `nvidia-ctk cdi generate` writes one);
where none does, it means every device of that kind.

Nothing here reads the image: hooks run by the runtime read what they read (see the runner).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ctr_remote.profile.errors import ProfileError
from ctr_remote.profile.spec import merge_env

# Released spec versions, newest first, with what each added that a spec file may use (the minimum
# version a file must declare); 0.1.0 and 0.2.0 are accepted as the reference implementation does.
VERSIONS = ("1.1.0", "1.0.0", "0.8.0", "0.7.0", "0.6.0", "0.5.0", "0.4.0", "0.3.0", "0.2.0", "0.1.0")
HOOK_NAMES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
ALL = "all"
_NAME_CHARS = re.compile(r"[A-Za-z0-9_.-]*")
_DEVICE_CHARS = re.compile(r"[A-Za-z0-9_.:-]*")


class CdiError(ProfileError):
    """A requested CDI device that cannot be injected, or a spec file that cannot be read."""


# ---- names -------------------------------------------------------------------------------------------


def _check_vendor_or_class(what: str, name: str) -> str | None:
    if not name:
        return f"empty {what}"
    if not name[0].isascii() or not name[0].isalpha():
        return f"{what} {name!r} should start with a letter"
    if not _NAME_CHARS.fullmatch(name) or not name[-1].isascii() or not name[-1].isalnum():
        return f"{what} {name!r} may hold letters, digits, '_', '-' and '.' and end with a letter or digit"
    return None


def _check_device_name(name: str) -> str | None:
    if not name:
        return "empty device name"
    ends_ok = all(c.isascii() and c.isalnum() for c in (name[0], name[-1]))
    if not ends_ok or not _DEVICE_CHARS.fullmatch(name):
        return (
            f"device name {name!r} may hold letters, digits, '_', '-', '.' and ':' and start and end "
            "with a letter or digit"
        )
    return None


def parse_device(value: str) -> str:
    """A fully qualified device name `vendor.com/class=name`, checked; ValueError says what is wrong."""
    kind, sep, name = value.partition("=")
    vendor, slash, cls = kind.partition("/")
    if not sep or not slash:
        raise ValueError(f"{value!r} is not a qualified CDI device name (vendor.com/class=name)")
    for problem in (
        _check_vendor_or_class("vendor", vendor),
        _check_vendor_or_class("class", cls),
        _check_device_name(name),
    ):
        if problem:
            raise ValueError(f"{value!r}: {problem}")
    return value


def gpu_devices(value: str) -> tuple[str, ...]:
    """`--gpus all` is `nvidia.com/gpu=all`; `--gpus 0,1` is `nvidia.com/gpu=0` and `nvidia.com/gpu=1`
    (any device name of the kind may be listed, e.g. a GPU's UUID, as NVIDIA's specs name them too)."""
    if value.strip() == ALL:
        return (f"nvidia.com/gpu={ALL}",)
    names = []
    for part in value.split(","):
        problem = _check_device_name(part.strip())
        if problem:
            raise ValueError(f"{value!r} is neither 'all' nor a list of GPU indices (or names): {problem}")
        names.append(f"nvidia.com/gpu={part.strip()}")
    return tuple(dict.fromkeys(names))


# ---- spec files --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceNode:
    path: str
    host_path: str = ""
    type: str = ""
    major: int = 0
    minor: int = 0
    file_mode: int | None = None
    permissions: str = ""
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True)
class CdiMount:
    host_path: str
    container_path: str
    options: tuple[str, ...] = ()
    type: str = ""


@dataclass(frozen=True)
class Hook:
    hook_name: str
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None


@dataclass(frozen=True)
class NetDevice:
    host_interface_name: str
    name: str


@dataclass(frozen=True)
class ContainerEdits:
    env: tuple[str, ...] = ()
    device_nodes: tuple[DeviceNode, ...] = ()
    mounts: tuple[CdiMount, ...] = ()
    hooks: tuple[Hook, ...] = ()
    additional_gids: tuple[int, ...] = ()
    intel_rdt: dict[str, Any] | None = None  # already in the OCI form
    net_devices: tuple[NetDevice, ...] = ()

    def __add__(self, other: ContainerEdits) -> ContainerEdits:
        """`other` after these (the reference implementation's Append: a later intelRdt wins)."""
        return ContainerEdits(
            env=self.env + other.env,
            device_nodes=self.device_nodes + other.device_nodes,
            mounts=self.mounts + other.mounts,
            hooks=self.hooks + other.hooks,
            additional_gids=self.additional_gids + other.additional_gids,
            intel_rdt=other.intel_rdt if other.intel_rdt is not None else self.intel_rdt,
            net_devices=self.net_devices + other.net_devices,
        )

    def empty(self) -> bool:
        return self == ContainerEdits()


@dataclass(frozen=True)
class CdiDevice:
    name: str
    edits: ContainerEdits


@dataclass(frozen=True)
class CdiSpec:
    path: Path
    priority: int  # index of its directory: higher wins
    kind: str  # vendor.com/class
    edits: ContainerEdits
    devices: tuple[CdiDevice, ...]


class _Malformed(Exception):
    pass


T = TypeVar("T")


def _object(value: object, where: str, required: Iterable[str], optional: Iterable[str]) -> dict[str, Any]:
    """A mapping with these keys only (the reference implementation refuses unknown fields)."""
    if not isinstance(value, dict):
        raise _Malformed(f"{where} is not an object")
    required = tuple(required)
    allowed = set(required) | set(optional)
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise _Malformed(f"{where} has an unknown field {unknown[0]!r}")
    missing = [k for k in required if value.get(k) in (None, "")]
    if missing:
        raise _Malformed(f"{where} has no {missing[0]!r}")
    return value


def _typed(value: object, kind: type[T], where: str) -> T:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Malformed(f"{where} is not a{'n' if kind is int else ''} {kind.__name__}")
    return value


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    return "" if value is None else _typed(value, str, f"{where}.{key}")


def _list(obj: dict[str, Any], key: str, where: str, item: Callable[[object, str], T]) -> tuple[T, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    return tuple(item(v, f"{where}.{key}[{i}]") for i, v in enumerate(_typed(value, list, f"{where}.{key}")))


def _opt_int(obj: dict[str, Any], key: str, where: str, lo: int, hi: int) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    n = _typed(value, int, f"{where}.{key}")
    if not lo <= n <= hi:
        raise _Malformed(f"{where}.{key} {n} is out of range")
    return n


def _string(value: object, where: str) -> str:
    return _typed(value, str, where)


def _gid(value: object, where: str) -> int:
    gid = _typed(value, int, where)
    if not 0 <= gid < 2**32:
        raise _Malformed(f"{where} {gid} is out of range")
    return gid


def _env_entry(value: object, where: str) -> str:
    entry = _string(value, where)
    if entry.find("=") <= 0:
        raise _Malformed(f"{where} {entry!r} is not NAME=VALUE")
    return entry


def _device_node(value: object, where: str) -> DeviceNode:
    obj = _object(
        value,
        where,
        ["path"],
        ["hostPath", "type", "major", "minor", "fileMode", "permissions", "uid", "gid"],
    )
    node = DeviceNode(
        path=_str(obj, "path", where),
        host_path=_str(obj, "hostPath", where),
        type=_str(obj, "type", where),
        major=_opt_int(obj, "major", where, -(2**63), 2**63 - 1) or 0,
        minor=_opt_int(obj, "minor", where, -(2**63), 2**63 - 1) or 0,
        file_mode=_opt_int(obj, "fileMode", where, 0, 2**32 - 1),
        permissions=_str(obj, "permissions", where),
        uid=_opt_int(obj, "uid", where, 0, 2**32 - 1),
        gid=_opt_int(obj, "gid", where, 0, 2**32 - 1),
    )
    if node.type not in ("", "b", "c", "u", "p"):
        raise _Malformed(f"{where}.type {node.type!r} is none of b, c, u, p")
    if node.permissions not in ("", "none") and node.permissions.strip("rwm"):
        raise _Malformed(f"{where}.permissions {node.permissions!r} is not made of r, w, m (or 'none')")
    return node


def _mount(value: object, where: str) -> CdiMount:
    obj = _object(value, where, ["hostPath", "containerPath"], ["options", "type"])
    return CdiMount(
        host_path=_str(obj, "hostPath", where),
        container_path=_str(obj, "containerPath", where),
        options=_list(obj, "options", where, _string),
        type=_str(obj, "type", where),
    )


def _hook(value: object, where: str) -> Hook:
    obj = _object(value, where, ["hookName", "path"], ["args", "env", "timeout"])
    hook = Hook(
        hook_name=_str(obj, "hookName", where),
        path=_str(obj, "path", where),
        args=_list(obj, "args", where, _string),
        env=_list(obj, "env", where, _env_entry),
        timeout=_opt_int(obj, "timeout", where, 1, 2**31 - 1),  # "MUST be greater than zero"
    )
    if hook.hook_name not in HOOK_NAMES:
        raise _Malformed(f"{where}.hookName {hook.hook_name!r} is none of {', '.join(HOOK_NAMES)}")
    if not hook.path.startswith("/"):
        raise _Malformed(f"{where}.path {hook.path!r} is not absolute")
    return hook


def _intel_rdt(value: object, where: str) -> dict[str, Any]:
    obj = _object(
        value, where, [], ["closID", "l3CacheSchema", "memBwSchema", "schemata", "enableMonitoring"]
    )
    clos = _str(obj, "closID", where)
    if clos != "/" and (len(clos) >= 4096 or clos in (".", "..") or any(c in clos for c in "/\n")):
        raise _Malformed(f"{where}.closID {clos!r} is not a valid CLOS name")
    rdt: dict[str, Any] = {}
    for key in ("closID", "l3CacheSchema", "memBwSchema"):
        if _str(obj, key, where):
            rdt[key] = obj[key]
    if obj.get("schemata") is not None:
        rdt["schemata"] = list(_list(obj, "schemata", where, _string))
    if obj.get("enableMonitoring") is not None and _typed(obj["enableMonitoring"], bool, where):
        rdt["enableMonitoring"] = True
    return rdt


def _net_device(value: object, where: str) -> NetDevice:
    obj = _object(value, where, ["hostInterfaceName", "name"], [])
    return NetDevice(_str(obj, "hostInterfaceName", where), _str(obj, "name", where))


def _edits(value: object, where: str) -> ContainerEdits:
    if value is None:
        return ContainerEdits()
    obj = _object(
        value,
        where,
        [],
        ["env", "deviceNodes", "mounts", "hooks", "additionalGids", "intelRdt", "netDevices"],
    )
    edits = ContainerEdits(
        env=_list(obj, "env", where, _env_entry),
        device_nodes=_list(obj, "deviceNodes", where, _device_node),
        mounts=_list(obj, "mounts", where, _mount),
        hooks=_list(obj, "hooks", where, _hook),
        additional_gids=_list(obj, "additionalGids", where, _gid),
        intel_rdt=None if obj.get("intelRdt") is None else _intel_rdt(obj["intelRdt"], f"{where}.intelRdt"),
        net_devices=_list(obj, "netDevices", where, _net_device),
    )
    for field_name, key in (("host_interface_name", "hostInterfaceName"), ("name", "name")):
        names = [getattr(d, field_name) for d in edits.net_devices]
        if len(set(names)) != len(names):
            raise _Malformed(f"{where}.netDevices has a duplicate {key}")
    return edits


def _required_version(kind: str, annotated: bool, devices: Sequence[CdiDevice], edits: ContainerEdits) -> str:
    """The oldest spec version that has every field this spec uses."""
    all_edits = [edits, *(d.edits for d in devices)]
    if any(
        e.net_devices or (e.intel_rdt and {"schemata", "enableMonitoring"} & set(e.intel_rdt))
        for e in all_edits
    ):
        return "1.1.0"
    if any(e.intel_rdt is not None or e.additional_gids for e in all_edits):
        return "0.7.0"
    if annotated or "." in kind.partition("/")[2]:
        return "0.6.0"
    if any(d.name[0].isdigit() for d in devices) or any(
        n.host_path for e in all_edits for n in e.device_nodes
    ):
        return "0.5.0"
    if any(m.type for e in all_edits for m in e.mounts):
        return "0.4.0"
    return "0.3.0"


def _annotations(value: object, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _Malformed(f"{where} is not a map of strings")
    return bool(value)


def parse_spec(data: bytes, path: Path, priority: int) -> CdiSpec:
    """One spec file's content; CdiError naming the file if it is not a valid CDI spec."""
    try:
        try:
            raw = yaml.safe_load(data)  # JSON is YAML: both go through here, as in the reference
        except yaml.YAMLError as e:
            raise _Malformed(" ".join(str(e).split())) from None
        obj = _object(raw, "the spec", ["cdiVersion", "kind", "devices"], ["annotations", "containerEdits"])
        version = str(obj["cdiVersion"]).removeprefix("v")
        if version not in VERSIONS:
            raise _Malformed(f"unknown cdiVersion {obj['cdiVersion']!r} (known: {', '.join(VERSIONS)})")
        kind = _typed(obj["kind"], str, "kind")
        vendor, slash, cls = kind.partition("/")
        problem = _check_vendor_or_class("vendor", vendor) or _check_vendor_or_class("class", cls)
        if not slash or problem:
            raise _Malformed(f"kind {kind!r} is not vendor.com/class" + (f": {problem}" if slash else ""))
        annotated = _annotations(obj.get("annotations"), "annotations")
        edits = _edits(obj.get("containerEdits"), "containerEdits")
        devices: list[CdiDevice] = []
        for i, d in enumerate(_typed(obj["devices"], list, "devices")):
            where = f"devices[{i}]"
            dev = _object(d, where, ["name"], ["annotations", "containerEdits"])
            name = _typed(dev["name"], str, f"{where}.name")
            problem = _check_device_name(name)
            if problem:
                raise _Malformed(f"{where}: {problem}")
            if any(other.name == name for other in devices):
                raise _Malformed(f"device {name!r} is defined twice")
            annotated = _annotations(dev.get("annotations"), f"{where}.annotations") or annotated
            device_edits = _edits(dev.get("containerEdits"), f"{where}.containerEdits")
            if device_edits.empty():
                raise _Malformed(f"device {name!r} has no containerEdits")
            devices.append(CdiDevice(name, device_edits))
        if not devices:
            raise _Malformed("it defines no devices")
        needed = _required_version(kind, annotated, devices, edits)
        if VERSIONS.index(needed) < VERSIONS.index(version):
            raise _Malformed(f"cdiVersion {version} is too old for the fields it uses (they need {needed})")
    except _Malformed as e:
        raise CdiError(f"malformed CDI spec {path}: {e}") from None
    return CdiSpec(path, priority, kind, edits, tuple(devices))


def read_specs(dirs: Sequence[Path]) -> list[CdiSpec]:
    """Every spec file in `dirs` (not below), in priority order; a missing directory has none."""
    specs = []
    for priority, directory in enumerate(dirs):
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            continue
        except OSError as e:
            raise CdiError(f"cannot read the CDI spec directory {directory}: {e.strerror}") from None
        for name in names:
            path = directory / name
            if path.suffix not in (".json", ".yaml") or path.is_dir():
                continue
            try:
                data = path.read_bytes()
            except OSError as e:
                raise CdiError(f"cannot read the CDI spec {path}: {e.strerror}") from None
            specs.append(parse_spec(data, path, priority))
    return specs


# ---- resolution --------------------------------------------------------------------------------------


@dataclass
class _Registry:
    """The winning definition of each qualified device name, and the names defined twice at one priority."""

    devices: dict[str, tuple[CdiSpec, CdiDevice]] = field(default_factory=dict)
    conflicts: dict[str, tuple[Path, Path]] = field(default_factory=dict)

    def add(self, spec: CdiSpec) -> None:
        for device in spec.devices:
            name = f"{spec.kind}={device.name}"
            old = self.devices.get(name)
            if old is not None and old[0].priority == spec.priority:
                self.conflicts[name] = (old[0].path, spec.path)
            elif old is None or spec.priority > old[0].priority:
                self.devices[name] = (spec, device)
                self.conflicts.pop(name, None)


def resolve(names: Sequence[str], dirs: Sequence[Path]) -> ContainerEdits:
    """The edits the requested devices make, merged in order (spec edits first, once per spec), with
    each device node filled in from the host. CdiError on an unknown or conflicting device."""
    registry = _Registry()
    for spec in read_specs(dirs):
        registry.add(spec)
    searched = ", ".join(str(d) for d in dirs) or "no directories"
    chosen: dict[str, tuple[CdiSpec, CdiDevice]] = {}
    for name in names:
        kind, _, device_name = name.partition("=")
        if name in registry.conflicts:
            a, b = registry.conflicts[name]
            raise CdiError(f"CDI device {name} is defined in both {a} and {b}")
        found = registry.devices.get(name)
        if found is not None:
            chosen.setdefault(name, found)
        elif device_name == ALL and any(n.partition("=")[0] == kind for n in registry.devices):
            for other, entry in registry.devices.items():
                if other.partition("=")[0] == kind:
                    chosen.setdefault(other, entry)
        else:
            raise CdiError(f"unknown CDI device {name} (CDI specs searched in {searched})")
    edits = ContainerEdits()
    seen: set[Path] = set()
    for spec, device in chosen.values():
        if spec.path not in seen:
            seen.add(spec.path)
            edits += spec.edits
        edits += device.edits
    return replace(edits, device_nodes=tuple(_filled(n) for n in edits.device_nodes))


def _filled(node: DeviceNode) -> DeviceNode:
    """Type, numbers and mode from the host node where the spec leaves them out (the reference's
    fillMissingInfo: a node given with its type and major number needs no host node)."""
    minimal = node.type != "" and (node.major != 0 or node.type == "p")
    host = node.host_path or node.path
    try:
        st = os.lstat(host)
    except OSError as e:
        if minimal:
            return replace(node, host_path=host)
        raise CdiError(f"CDI device node {node.path}: cannot stat {host} on the host: {e.strerror}") from None
    if stat.S_ISBLK(st.st_mode):
        host_type = "b"
    elif stat.S_ISCHR(st.st_mode):
        host_type = "c"
    elif stat.S_ISFIFO(st.st_mode):
        host_type = "p"
    elif minimal:
        return replace(node, host_path=host)
    else:
        raise CdiError(f"CDI device node {node.path}: {host} on the host is not a device node")
    # The mode even for a node given whole: what a runtime creates the node with.
    node = replace(
        node, host_path=host, file_mode=stat.S_IMODE(st.st_mode) if node.file_mode is None else node.file_mode
    )
    if minimal:
        return node
    if node.type and node.type != host_type:
        raise CdiError(f"CDI device node {node.path}: type {node.type} but {host} is of type {host_type}")
    node = replace(node, type=host_type)
    if host_type != "p" and node.major == 0:
        node = replace(node, major=os.major(st.st_rdev), minor=os.minor(st.st_rdev))
    return node


# ---- the OCI spec ------------------------------------------------------------------------------------


def apply(oci: dict[str, Any], edits: ContainerEdits) -> None:
    """Apply resolved `edits` to the OCI runtime spec `oci`, in place."""
    process = oci.setdefault("process", {})
    linux = oci.setdefault("linux", {})
    if edits.env:
        process["env"] = merge_env(list(process.get("env") or []), list(edits.env))
    user = process.setdefault("user", {"uid": 0, "gid": 0})
    for node in edits.device_nodes:
        device: dict[str, Any] = {"path": node.path, "type": node.type}
        if node.type != "p":
            device["major"], device["minor"] = node.major, node.minor
        if node.file_mode is not None:
            device["fileMode"] = node.file_mode
        uid = node.uid if node.uid is not None else user.get("uid") or None
        gid = node.gid if node.gid is not None else user.get("gid") or None
        if uid is not None:
            device["uid"] = uid
        if gid is not None:
            device["gid"] = gid
        linux["devices"] = [d for d in linux.get("devices") or [] if d.get("path") != node.path] + [device]
        if node.type in ("b", "c"):
            access = {"": "rwm", "none": ""}.get(node.permissions, node.permissions)
            rule = {
                "allow": True,
                "type": node.type,
                "major": node.major,
                "minor": node.minor,
                "access": access,
            }
            linux.setdefault("resources", {}).setdefault("devices", []).append(rule)
    for net in edits.net_devices:
        linux.setdefault("netDevices", {})[net.host_interface_name] = {"name": net.name}
    if edits.mounts:
        # No user namespace in our spec, so no idmap options are needed on bind mounts.
        mounts = list(oci.get("mounts") or [])
        for m in edits.mounts:
            mounts = [x for x in mounts if x.get("destination") != m.container_path]
            mount: dict[str, Any] = {"destination": m.container_path, "source": m.host_path}
            if m.type:
                mount["type"] = m.type
            if m.options:
                mount["options"] = list(m.options)
            mounts.append(mount)
        # Parents before children, as CDI (and moby) order them: stable by depth.
        mounts.sort(key=lambda x: os.path.normpath(x["destination"]).count("/"))
        oci["mounts"] = mounts
    for h in edits.hooks:
        hook: dict[str, Any] = {"path": h.path}
        if h.args:
            hook["args"] = list(h.args)
        if h.env:
            hook["env"] = list(h.env)
        if h.timeout is not None:
            hook["timeout"] = h.timeout
        oci.setdefault("hooks", {}).setdefault(h.hook_name, []).append(hook)
    if edits.intel_rdt is not None:
        linux["intelRdt"] = dict(edits.intel_rdt)
    gids = user.setdefault("additionalGids", [])
    for gid in edits.additional_gids:
        if gid and gid not in gids:
            gids.append(gid)
