"""Each workload flag changes what runs in the container (real runc, busybox workloads)."""

from __future__ import annotations

import os
import select
import signal
import stat
import subprocess
import termios
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ctr_remote.profile import DnsConfig, Mount, NetworkMode, ProfileError, Workload, profile
from ctr_remote.profile.runtime import stop_signal_of
from ctr_remote.profile.workload import RecorderKind
from tests.helpers.images import image_config
from tests.profile.conftest import DRIVER_ENV, RECORDERS, ROOT, driver_command, start_driver

ECHO_IMAGE = image_config(entrypoint=["/bin/echo", "image-entrypoint"], cmd=["image-cmd"])


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, "image-entrypoint image-cmd"),
        ({"entrypoint": ("/bin/echo", "new-entrypoint")}, "new-entrypoint image-cmd"),
        ({"args": ("new-args",)}, "image-entrypoint new-args"),
        ({"entrypoint": ("/bin/echo",), "args": ()}, ""),
    ],
)
def test_entrypoint_and_args_replace_the_image_ones(run, capfd, fields: dict, expected: str) -> None:
    result = run(None, config=ECHO_IMAGE, **fields)
    assert result.exit_code == 0
    assert capfd.readouterr().out == expected + "\n"


def test_env_replaces_image_keys_and_adds_new_ones(run, capfd) -> None:
    config = image_config(cmd=["/bin/env"], env=["PATH=/bin", "FOO=image", "KEEP=image"])
    run(None, config=config, env=("FOO=workload", "NEW=1"))
    env = capfd.readouterr().out.splitlines()
    assert "FOO=workload" in env and "KEEP=image" in env and "NEW=1" in env and "PATH=/bin" in env
    assert "FOO=image" not in env


@pytest.mark.parametrize("recorder", RECORDERS)
@pytest.mark.parametrize(
    ("user", "expected"),
    [
        (None, "uid=0(root) gid=0(root)"),
        # busybox lists supplementary groups only: alice's come from the image's /etc/group
        ("alice", "uid=1000(alice) gid=1000(alice) groups=50(staff)"),
        ("1000", "uid=1000(alice) gid=1000(alice) groups=50(staff)"),
        ("alice:root", "uid=1000(alice) gid=0(root) groups=50(staff)"),
        ("nobody:50", "uid=65534(nobody) gid=50(staff)"),
        ("4242:4343", "uid=4242 gid=4343"),
    ],
)
def test_user(run, capfd, user: str | None, expected: str) -> None:
    result = run("id", user=user)
    assert result.exit_code == 0
    assert capfd.readouterr().out.strip() == expected


@pytest.mark.parametrize("recorder", RECORDERS)
def test_user_and_cwd_default_to_the_image_config(run, capfd) -> None:
    config = image_config(cmd=["/bin/sh", "-c", "id -un; pwd"], user="alice", working_dir="/tmp")
    run(None, config=config)
    assert capfd.readouterr().out.split() == ["alice", "/tmp"]


def test_unknown_user_is_a_one_line_error(run) -> None:
    with pytest.raises(ProfileError, match="user 'mallory' not found") as e:
        run("id", user="mallory")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("recorder", RECORDERS)
def test_cwd(run, capfd) -> None:
    run("pwd", cwd="/etc")
    assert capfd.readouterr().out == "/etc\n"


@pytest.mark.parametrize("recorder", RECORDERS)
def test_bind_mount(run, capfd, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hello.txt").write_text("hello from the host\n")
    mount = Mount("bind", str(shared), "/srv/shared", ("ro",))
    result = run(
        "cat /srv/shared/hello.txt; touch /srv/shared/new 2>/dev/null || echo read-only", mounts=(mount,)
    )
    assert result.exit_code == 0
    assert capfd.readouterr().out == "hello from the host\nread-only\n"
    assert sorted(os.listdir(shared)) == ["hello.txt"]


@pytest.mark.parametrize("recorder", RECORDERS)
def test_tmpfs_mount(run, capfd) -> None:
    run(
        "grep ' /scratch ' /proc/mounts | cut -d' ' -f3",
        mounts=(Mount("tmpfs", "tmpfs", "/scratch", ("size=1m",)),),
    )
    assert capfd.readouterr().out == "tmpfs\n"


def test_default_network_is_a_fresh_namespace_with_loopback_up(run, capfd) -> None:
    workload_dns = DnsConfig(
        nameservers=("10.0.0.53", "10.0.0.54"), search_domains=("a.test", "b.test"), options=("ndots:2",)
    )
    run(
        "ls /sys/class/net; cat /sys/class/net/lo/flags; cat /etc/hosts; echo ---; cat /etc/resolv.conf",
        dns=workload_dns,
        add_hosts=(("registry.test", "10.1.2.3"),),
    )
    out = capfd.readouterr().out
    interfaces, rest = out.split("\n", 1)
    assert interfaces == "lo"
    flags, rest = rest.split("\n", 1)
    assert int(flags, 16) & 0x1, "loopback is down"
    hosts, resolv = rest.split("---\n")
    assert hosts.splitlines()[0] == "127.0.0.1\tlocalhost"
    assert "::1\tlocalhost ip6-localhost ip6-loopback" in hosts.splitlines()
    assert hosts.splitlines()[-1] == "10.1.2.3\tregistry.test"
    assert resolv == "nameserver 10.0.0.53\nnameserver 10.0.0.54\nsearch a.test b.test\noptions ndots:2\n"


def test_default_resolv_conf_uses_upstream_nameserver(run, capfd) -> None:
    run("cat /etc/resolv.conf")
    assert capfd.readouterr().out == "nameserver 8.8.8.8\n"


def test_net_host_shares_the_host_network_and_its_files(run, capfd) -> None:
    run("ls /sys/class/net; echo ---; cat /etc/hosts", network=NetworkMode.HOST)
    interfaces, hosts = capfd.readouterr().out.split("---\n")
    assert set(interfaces.split()) - {"lo"}, "the host's interfaces should be visible"
    assert set(interfaces.split()) & set(os.listdir("/sys/class/net")) - {"lo"}
    assert hosts == Path("/etc/hosts").read_text()


def test_runtime_option_runs_the_given_binary(run, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    wrapper = tmp_path / "my-runtime"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec runc "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    result = run("true", runtime=str(wrapper))
    assert result.exit_code == 0
    assert " run --bundle " in calls.read_text()


def test_missing_runtime_is_a_one_line_error(run) -> None:
    with pytest.raises(ProfileError, match="OCI runtime 'no-such-runtime' not found") as e:
        run("true", runtime="no-such-runtime")
    assert "\n" not in str(e.value)


def test_missing_workload_binary_is_a_one_line_error(run) -> None:
    with pytest.raises(
        ProfileError, match="workload executable 'no-such-binary' not found in the image"
    ) as e:
        run(None, config=image_config(cmd=["no-such-binary", "--flag"]))
    assert "\n" not in str(e.value)


def test_runtime_failure_to_start_is_a_one_line_error(run) -> None:
    with pytest.raises(ProfileError, match=r"runc could not start the workload: .*no such device") as e:
        run("true", mounts=(Mount("no-such-fstype", "none", "/x"),))
    assert "\n" not in str(e.value)


def test_no_command_is_a_one_line_error(run) -> None:
    with pytest.raises(ProfileError, match="no command to run"):
        run(None, config=image_config())


def test_missing_dev_fuse_is_a_one_line_error(tmp_path: Path, work: Path, busybox_layer: Path) -> None:
    """A real machine without /dev/fuse: the driver runs in a mount namespace whose /dev lacks it."""
    script = tmp_path / "run.sh"
    script.write_text(
        "set -e\n"
        "mount -t tmpfs -o mode=755 nodev /dev\n"
        "mknod -m 666 /dev/null c 1 3; mknod -m 666 /dev/zero c 1 5; mknod -m 666 /dev/urandom c 1 9\n"
        'exec "$@"\n'
    )
    cmd, _ = driver_command(tmp_path, work, [busybox_layer], image_config(cmd=["true"]), {"period": 30})
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", str(script), *cmd],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=DRIVER_ENV,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        "ctr-remote: cannot open /dev/fuse (No such file or directory): "
        "FUSE is required to record file accesses"
    ]


@pytest.mark.parametrize("recorder", RECORDERS)
def test_terminal_gives_the_workload_a_pseudo_terminal(
    tmp_path: Path, work: Path, busybox_layer: Path, recorder: str
) -> None:
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    script = "test -t 0 && test -t 1 && echo STDIN-AND-STDOUT-ARE-TTYS; tty"
    proc, _ = start_driver(
        tmp_path,
        work,
        [busybox_layer],
        image_config(cmd=["/bin/sh", "-c", script]),
        {"terminal": True, "stdin": True, "period": 30, "recorder": recorder},
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    watcher = os.open(os.ttyname(slave), os.O_RDWR | os.O_NOCTTY)  # to look at the modes afterwards
    os.close(slave)
    try:
        assert proc.wait(timeout=60) == 0
        out = _read_available(master)
        assert termios.tcgetattr(watcher) == before, "the terminal was left in another mode (raw?)"
    finally:
        os.close(watcher)
        os.close(master)
    assert "STDIN-AND-STDOUT-ARE-TTYS" in out
    assert "/dev/pts/" in out


def test_without_terminal_the_workload_has_no_tty(run, capfd) -> None:
    run("test -t 1 && echo TTY || echo NO-TTY")
    assert capfd.readouterr().out == "NO-TTY\n"


@pytest.mark.parametrize("recorder", RECORDERS)
@pytest.mark.parametrize("stdin", [True, False])
def test_stdin_is_forwarded_only_with_i(
    tmp_path: Path, work: Path, busybox_layer: Path, stdin: bool, recorder: str
) -> None:
    proc, _ = start_driver(
        tmp_path,
        work,
        [busybox_layer],
        image_config(cmd=["/bin/sh", "-c", "echo got:$(cat)"]),
        {"stdin": stdin, "period": 30, "recorder": recorder},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    out, _ = proc.communicate(b"hello-stdin\n", timeout=60)
    assert proc.returncode == 0
    assert out.decode().splitlines()[0] == ("got:hello-stdin" if stdin else "got:")


def _read_available(fd: int) -> str:
    """What the pty holds once the writer has exited (it keeps the output until read)."""
    chunks = []
    while select.select([fd], [], [], 0)[0]:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


def test_two_runs_at_once_do_not_collide(tmp_path: Path, busybox_layer: Path) -> None:
    """Each waits until it sees the other's marker: they really overlap, in one work directory (as two
    CLI runs share the system temp dir), with separate runc state."""
    shared = tmp_path / "shared"
    shared.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    procs = []
    for me, other in (("a", "b"), ("b", "a")):
        d = tmp_path / me
        d.mkdir()
        script = (
            f"touch /shared/{me}; i=0; "
            f"while [ ! -e /shared/{other} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; "
            f"test -e /shared/{other}"
        )
        workload = {
            "period": 120,
            "mounts": [{"type": "bind", "source": str(shared), "destination": "/shared"}],
        }
        procs.append(
            start_driver(d, work, [busybox_layer], image_config(cmd=["/bin/sh", "-c", script]), workload)
        )
    for proc, result in procs:
        assert proc.wait(timeout=120) == 0
        assert '"exit_code": 0' in result.read_text()
    assert list(work.iterdir()) == []


def test_workload_dataclass_defaults_match_upstream() -> None:
    w = Workload()
    assert w.period == 10 and w.network is NetworkMode.NONE and w.dns.nameservers == ("8.8.8.8",)
    assert w.recorder is RecorderKind.FUSE and w.entrypoint is None and w.args is None


def test_missing_layer_blob_and_work_dir_are_one_line_errors(
    run, tmp_path: Path, busybox_layer: Path
) -> None:
    with pytest.raises(ProfileError, match=r"layer blob .*missing\.tar does not exist"):
        run("true", tmp_path / "missing.tar")
    with pytest.raises(ProfileError, match=r"cannot create a work directory in .*/nowhere"):
        profile([busybox_layer], image_config(cmd=["true"]), Workload(), workdir=tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, signal.SIGKILL), ("SIGTERM", signal.SIGTERM), ("TERM", signal.SIGTERM), ("15", signal.SIGTERM)],
)
def test_stop_signal_forms(value: str | None, expected: signal.Signals) -> None:
    assert stop_signal_of(image_config(stop_signal=value)) is expected


def test_unknown_stop_signal_is_a_one_line_error() -> None:
    with pytest.raises(ProfileError, match="unknown StopSignal 'SIGNOPE'"):
        stop_signal_of(image_config(stop_signal="SIGNOPE"))


def test_work_dir_with_a_space(tmp_path: Path, busybox_layer: Path) -> None:
    work = tmp_path / "with space"
    work.mkdir()
    result = profile(
        [busybox_layer], image_config(cmd=["/bin/sh", "-c", "cat /etc/group"]), Workload(), workdir=work
    )
    assert result.accessed == [["etc/passwd", "etc/group", "bin/busybox"]]
    assert list(work.iterdir()) == []
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text().replace("\\040", " ")


def test_container_has_the_default_mounts(run, capfd) -> None:
    run("cut -d' ' -f2,3 /proc/mounts | grep -E '^/(proc|dev|dev/pts|dev/shm|dev/mqueue|sys|sys/fs/cgroup) '")
    found = dict(line.split() for line in capfd.readouterr().out.splitlines())
    assert found["/proc"] == "proc" and found["/sys"] == "sysfs" and found["/dev/pts"] == "devpts"
    assert found["/dev"] == "tmpfs" and found["/dev/shm"] == "tmpfs" and found["/dev/mqueue"] == "mqueue"
    assert found.get("/sys/fs/cgroup") in ("tmpfs", "cgroup", "cgroup2")


def test_profile_from_a_worker_thread(work: Path, busybox_layer: Path) -> None:
    """No signal handlers can be installed off the main thread; the run must still work and clean up."""
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(
            profile, [busybox_layer], image_config(cmd=["/bin/cat", "/etc/group"]), Workload(), workdir=work
        ).result(timeout=120)
    assert result.exit_code == 0
    assert result.accessed == [["etc/passwd", "etc/group", "bin/busybox"]]
