"""`ctr-remote image optimize`: upstream's flags, parsed into `Workload` and `OptimizeOptions`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ctr_remote.cli import flags
from ctr_remote.cli.layer_flags import check_layer_flags, layer_flags, layer_options
from ctr_remote.cli.streams import WorkloadStreams
from ctr_remote.cli.types import (
    PERIOD,
    PIDS_LIMIT,
    PREFETCH_LIST,
    check_platform_flags,
    platform_flags,
    reference,
)
from ctr_remote.errors import Interrupted, UsageError
from ctr_remote.log import LogFormat
from ctr_remote.options import OptimizeOptions
from ctr_remote.profile.workload import (
    DEFAULT_CDI_SPEC_DIRS,
    DEFAULT_CNI_CONF_DIR,
    DEFAULT_CNI_PLUGIN_DIR,
    DEFAULT_NAMESERVERS,
    DEFAULT_PERIOD_SECONDS,
    DEFAULT_PIDS_LIMIT,
    CniConfig,
    DnsConfig,
    NetworkMode,
    RecorderKind,
    Workload,
)


def _conflicts(p: dict[str, Any]) -> None:
    """The combinations upstream refuses, and those that make no sense for this tool."""
    if p["terminal"] and not p["stdin"]:
        raise UsageError('terminal flag must be specified with "-i"')
    if p["wait_on_signal"] and p["terminal"]:
        raise UsageError("wait-on-signal can't be used with terminal flag")
    if p["prefetch_list"] and p["no_optimize"]:
        raise UsageError("--prefetch-list can't be used with --no-optimize")
    if p["cni"] and p["net_host"]:
        raise UsageError("--cni can't be used with --net-host")
    check_platform_flags(p["platform"], p["all_platforms"])
    check_layer_flags(p)


def _workload(p: dict[str, Any]) -> Workload:
    env: list[str] = []
    if p["env_file"]:
        env.extend(flags.env_file(p["env_file"]))
    env.extend(flags.env_pair("--env", e) for e in p["env"])
    network = NetworkMode.CNI if p["cni"] else NetworkMode.HOST if p["net_host"] else NetworkMode.NONE
    return Workload(
        entrypoint=flags.json_array("--entrypoint", p["entrypoint"]),
        args=flags.json_array("--args", p["args"]),
        env=tuple(env),
        user=p["user"],
        cwd=p["cwd"],
        mounts=tuple(flags.mount(m) for m in p["mount"]),
        period=p["period"] if p["period"] > 0 else DEFAULT_PERIOD_SECONDS,  # upstream: <= 0 is the default
        wait_on_signal=p["wait_on_signal"],
        wait_on_line=p["wait_on_line"] or None,
        terminal=p["terminal"],
        stdin=p["stdin"],
        network=network,
        cni=CniConfig(conf_dir=p["cni_plugin_conf_dir"], plugin_dir=p["cni_plugin_dir"]),
        dns=DnsConfig(
            nameservers=flags.csv(p["dns_nameservers"]),
            search_domains=flags.csv(p["dns_search_domains"]),
            options=flags.csv(p["dns_options"]),
        ),
        add_hosts=flags.add_hosts(p["add_hosts"]),
        runtime=p["runtime"],
        recorder=RecorderKind(p["recorder"]),
        pids_limit=p["pids_limit"],
        devices=flags.cdi_devices(p["gpus"], p["device"]),
        cdi_spec_dirs=tuple(p["cdi_spec_dir"]) or DEFAULT_CDI_SPEC_DIRS,
    )


def _options(source_ref: str, target_ref: str, p: dict[str, Any]) -> OptimizeOptions:
    layer = layer_options(p)
    return OptimizeOptions(
        source=reference(source_ref, plain_http=p["plain_http"]),
        target=reference(target_ref, plain_http=p["plain_http"]),
        reuse=p["reuse"],
        platforms=tuple(p["platform"]),
        all_platforms=p["all_platforms"],
        optimize=not p["no_optimize"],
        prefetch=p["prefetch_list"],
        record_out=p["record_out"],
        oci=p["oci"],
        layer=layer,
        require_converted=p["require_converted"],
    )


def parse(source_ref: str, target_ref: str, params: dict[str, Any]) -> tuple[OptimizeOptions, Workload]:
    """The command's parsed params as typed options: what `optimize_command` and a batch file's
    `optimize` jobs run (one parser for both)."""
    _conflicts(params)
    workload = _workload(params)
    return _options(source_ref, target_ref, params), workload


_dir = click.Path(file_okay=False, path_type=Path)


@click.command(
    "optimize",
    short_help="optimize an image with user-specified workload",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.argument("source_ref")
@click.argument("target_ref")
@click.option(
    "--plain-http", is_flag=True, help="allow HTTP connections to registries given as http://host/repo"
)
@click.option(
    "--reuse", is_flag=True, help="reuse eStargz (already optimized) layers without further conversion"
)
@platform_flags(
    "convert the image for this platform (os[/arch[/variant]]); repeatable",
    "targeting all platform of the source image",
)
@click.option(
    "--wait-on-signal",
    is_flag=True,
    help="ignore the period and keep the container running until it receives SIGINT (Ctrl + C)",
)
@click.option(
    "--wait-on-line", metavar="TEXT", help="stop the container once a line of its stdout contains TEXT"
)
@click.option("--no-optimize", is_flag=True, help="convert image without optimization")
@click.option(
    "--prefetch-list",
    type=PREFETCH_LIST,
    help="file of paths or globs to prioritize, instead of running the workload",
)
@click.option(
    "--record-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="record the monitor log to the specified file",
)
@click.option("--oci", is_flag=True, help="convert Docker media types to OCI media types")
@layer_flags
@click.option(
    "-t", "--terminal", is_flag=True, help='enable terminal for sample container. must be specified with "-i"'
)
@click.option("-i", "stdin", is_flag=True, help="attach stdin to the container")
@click.option(
    "--period",
    type=PERIOD,
    default=DEFAULT_PERIOD_SECONDS,
    show_default=True,
    help="time period (seconds) to monitor access log; 0 or less: the default, as upstream",
)
@click.option("--user", help="user/group name to override image's default config(user[:group])")
@click.option("--cwd", help="working dir to override image's default config")
@click.option("--args", help="command arguments to override image's default config(in JSON array)")
@click.option("--entrypoint", help="entrypoint to override image's default config(in JSON array)")
@click.option(
    "--env",
    multiple=True,
    metavar="KEY=VALUE",
    help="environment variable to add or override to the image's default config; repeatable",
)
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="additional container environment variables in a file (FOO=bar, one per line)",
)
@click.option(
    "--mount",
    multiple=True,
    help="additional mounts for the container, as ctr's --mount: "
    "type=bind,src=/path,dst=/target,options=rbind:ro; repeatable",
)
@click.option(
    "--dns-nameservers",
    default=",".join(DEFAULT_NAMESERVERS),
    show_default=True,
    help="comma-separated nameservers added to the container's /etc/resolv.conf",
)
@click.option(
    "--dns-search-domains",
    help="comma-separated search domains added to the container's /etc/resolv.conf",
)
@click.option("--dns-options", help="comma-separated options added to the container's /etc/resolv.conf")
@click.option(
    "--add-hosts",
    help="comma-separated hosts configuration (host:IP) added to container's /etc/hosts",
)
@click.option("--cni", is_flag=True, help="enable CNI-based networking")
@click.option(
    "--cni-plugin-conf-dir",
    "--cni-plugin-config-dir",
    "cni_plugin_conf_dir",
    type=_dir,
    default=DEFAULT_CNI_CONF_DIR,
    show_default=True,
    help="path to the CNI plugins configuration directory",
)
@click.option(
    "--cni-plugin-dir",
    type=_dir,
    default=DEFAULT_CNI_PLUGIN_DIR,
    show_default=True,
    help="path to the CNI plugins binary directory (Debian installs them in /usr/lib/cni)",
)
@click.option(
    "--pids-limit",
    type=PIDS_LIMIT,
    default=str(DEFAULT_PIDS_LIMIT),
    show_default=True,
    help="most processes and threads the container may have at once (a pids cgroup); -1: no limit",
)
@click.option("--net-host", is_flag=True, help="enable host networking in the container")
@click.option(
    "--gpus",
    metavar="all|I,J,...",
    help="add GPUs through CDI: 'all' is nvidia.com/gpu=all, '0,1' is nvidia.com/gpu=0 and =1",
)
@click.option(
    "--device",
    multiple=True,
    metavar="VENDOR/CLASS=NAME",
    help="add a CDI device by its fully qualified name (e.g. vendor.com/fpga=0); repeatable",
)
@click.option(
    "--cdi-spec-dir",
    multiple=True,
    type=_dir,
    help="directory of CDI spec files, replacing the defaults "
    f"({', '.join(str(d) for d in DEFAULT_CDI_SPEC_DIRS)}); repeatable, a later one has priority",
)
@click.option(
    "--runtime",
    default="runc",
    show_default=True,
    help="OCI runtime binary used to run the container (e.g. crun)",
)
@click.option(
    "--recorder",
    type=click.Choice([k.value for k in RecorderKind]),
    default=RecorderKind.FUSE.value,
    show_default=True,
    help="how file accesses are recorded: a FUSE passthrough under each layer, or fanotify on the "
    "container's overlay (as upstream; needs root in the initial user namespace)",
)
def optimize_command(source_ref: str, target_ref: str, **params: object) -> None:
    """Optimize an image with user-specified workload.

    Converts SOURCE_REF into eStargz, prioritizing the files its workload reads, and writes the
    result to TARGET_REF. References are registry references (host[:port]/repo[:tag|@digest]),
    http://host[:port]/repo[:tag] with --plain-http, or local:///path/to/oci-layout.
    """
    options, workload = parse(source_ref, target_ref, params)
    from ctr_remote.cli.cleanup import sweep_before_run
    from ctr_remote.optimize import optimize  # the pipeline pulls in every package: load it only to run

    sweep_before_run()

    root = click.get_current_context().find_root()
    try:
        with WorkloadStreams(LogFormat(root.params["log_format"]), debug=root.params["debug"]) as streams:
            result = optimize(options, workload, root.obj)
    except KeyboardInterrupt:
        # Not left to click, which would print a bare newline first (not a JSON line).
        raise Interrupted("interrupted") from None
    streams.result("\n".join([*(f"extra image: {name}" for name in result.extra_images), result.digest]))
