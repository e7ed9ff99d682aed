"""Plugin failures, DEL failures and Ctrl-C, with a scripted plugin chained after the real bridge.

The scripted plugin is a real executable speaking the CNI protocol; its config says how to misbehave:
`"fail": {"ADD": {"stdout": ..., "stderr": ..., "rc": N}}`, `"hang": "ADD"`, `"log"` (a file it appends
each command to) and `"gate"` (a Unix socket it reports to during ADD, then waits on before finishing).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ctr_remote.profile import cni
from ctr_remote.profile.cni import CniError, cni_network
from ctr_remote.profile.workload import CniConfig
from tests.cni.conftest import PLUGIN_DIR, CniPlayground

SCRIPTED_PLUGIN = f"""#!{sys.executable}
import json, os, socket, sys
conf = json.load(sys.stdin)
command = os.environ["CNI_COMMAND"]
def log(what):
    if conf.get("log"):
        with open(conf["log"], "a") as f:
            f.write(what + "\\n")
log(command + " " + os.environ["CNI_CONTAINERID"] + " " + os.environ["CNI_IFNAME"])
if command == "ADD" and conf.get("gate"):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(conf["gate"])
        s.sendall(b"started")
        s.recv(16)
if conf.get("hang") == command:
    import time
    time.sleep(3600)
fail = conf.get("fail", {{}}).get(command)
if fail:
    sys.stdout.write(fail.get("stdout", ""))
    sys.stderr.write(fail.get("stderr", ""))
    sys.exit(fail.get("rc", 1))
if command == "ADD":
    json.dump(conf.get("prevResult") or {{"cniVersion": conf["cniVersion"]}}, sys.stdout)
log(command + " done")
"""


def _plugin_dir(tmp_path: Path) -> Path:
    """The real plugins plus `scripted`."""
    plugins = tmp_path / "bin"
    plugins.mkdir()
    for real in PLUGIN_DIR.iterdir():
        (plugins / real.name).symlink_to(real)
    script = plugins / "scripted"
    script.write_text(SCRIPTED_PLUGIN)
    script.chmod(0o755)
    return plugins


def _chain(pg: CniPlayground, **scripted: Any) -> CniConfig:
    pg.write_chain({"type": "scripted", "log": str(pg.tmp / "plugin.log"), **scripted})
    return CniConfig(pg.conf_dir, _plugin_dir(pg.tmp))


def _plugin_log(pg: CniPlayground) -> list[str]:
    return (pg.tmp / "plugin.log").read_text().splitlines()


@pytest.mark.parametrize(
    ("fail", "expected"),
    [
        (
            {
                "stdout": json.dumps(
                    {"cniVersion": "1.0.0", "code": 11, "msg": "no luck", "details": "line 1\nline 2"}
                )
            },
            "no luck: line 1 line 2 (code 11)",
        ),
        ({"stderr": "panic: something\n  at somewhere\n", "rc": 2}, "panic: something at somewhere"),
        ({"rc": 3}, "exit status 3"),
    ],
)
def test_plugin_error_is_one_line_naming_the_plugin(
    playground: CniPlayground, fail: dict[str, Any], expected: str
) -> None:
    pg = playground
    config = _chain(pg, fail={"ADD": fail})
    with pytest.raises(CniError) as e, cni_network(config, "ctrt-err", netns_dir=pg.netns_dir):
        pytest.fail("the block must not run")
    assert str(e.value) == f'CNI plugin "scripted" failed ADD on network "{pg.tag}": {expected}'
    # The whole chain is deleted in reverse order; bridge's DEL releases its IP and veth.
    assert _plugin_log(pg) == ["ADD ctrt-err eth0", "DEL ctrt-err eth0", "DEL done"]
    pg.assert_clean()


def test_a_huge_message_is_cut_to_one_reasonable_line(playground: CniPlayground) -> None:
    pg = playground
    config = _chain(pg, fail={"ADD": {"stderr": "panic: boom\n" + "goroutine 1 [running]:\n" * 1000}})
    with pytest.raises(CniError) as e, cni_network(config, "ctrt-huge", netns_dir=pg.netns_dir):
        pytest.fail("the block must not run")
    message = str(e.value)
    assert message.startswith(
        f'CNI plugin "scripted" failed ADD on network "{pg.tag}": panic: boom goroutine'
    )
    assert message.endswith("…")
    assert len(message) < 600
    pg.assert_clean()


def test_a_hanging_plugin_is_killed_and_torn_down(
    playground: CniPlayground, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg = playground
    monkeypatch.setattr(cni, "PLUGIN_TIMEOUT_SECONDS", 1.0)
    config = _chain(pg, hang="ADD")
    with pytest.raises(CniError) as e, cni_network(config, "ctrt-hang", netns_dir=pg.netns_dir):
        pytest.fail("the block must not run")
    assert str(e.value) == f'CNI plugin "scripted" did not finish ADD on network "{pg.tag}" within 1 s'
    assert _plugin_log(pg) == ["ADD ctrt-hang eth0", "DEL ctrt-hang eth0", "DEL done"]
    pg.assert_clean()


def test_non_json_result_is_an_error(playground: CniPlayground) -> None:
    pg = playground
    config = _chain(pg, fail={"ADD": {"stdout": "I am not JSON", "rc": 0}})
    with (
        pytest.raises(CniError, match=r'^CNI plugin "scripted" printed a non-JSON result for ADD on network'),
        cni_network(config, "ctrt-nonjson", netns_dir=pg.netns_dir),
    ):
        pytest.fail("the block must not run")
    pg.assert_clean()


def test_malformed_result_is_an_error_and_is_torn_down(playground: CniPlayground) -> None:
    pg = playground
    bad = json.dumps({"cniVersion": "1.0.0", "ips": [{"address": "not-an-address"}]})
    config = _chain(pg, fail={"ADD": {"stdout": bad, "rc": 0}})
    with (
        pytest.raises(CniError, match=rf'^malformed CNI result from network "{pg.tag}": .*not-an-address'),
        cni_network(config, "ctrt-malformed", netns_dir=pg.netns_dir),
    ):
        pytest.fail("the block must not run")
    assert _plugin_log(pg)[-2:] == ["DEL ctrt-malformed eth0", "DEL done"]
    pg.assert_clean()


def test_failing_del_still_runs_the_other_dels_and_removes_the_namespace(playground: CniPlayground) -> None:
    pg = playground
    config = _chain(pg, fail={"DEL": {"stderr": "cannot let go"}})
    with pytest.raises(CniError) as e:  # noqa: SIM117 (the error comes from leaving the inner block)
        with cni_network(config, "ctrt-del", netns_dir=pg.netns_dir) as att:
            assert pg.fetch(att.netns_path)
    assert str(e.value) == f'CNI plugin "scripted" failed DEL on network "{pg.tag}": cannot let go'
    pg.assert_clean()


def test_failing_del_does_not_hide_the_blocks_error(playground: CniPlayground) -> None:
    pg = playground
    config = _chain(pg, fail={"DEL": {"stderr": "cannot let go"}})
    with pytest.raises(RuntimeError, match="the workload's own error"):  # noqa: SIM117
        with cni_network(config, "ctrt-del2", netns_dir=pg.netns_dir):
            raise RuntimeError("the workload's own error")
    pg.assert_clean()


DRIVER = """
import sys
from pathlib import Path
from ctr_remote.profile.cni import cni_network
from ctr_remote.log import configure
from ctr_remote.profile.workload import CniConfig
configure()  # as the CLI does: logs on stderr
conf_dir, plugin_dir, netns_dir = map(Path, sys.argv[1:4])
with cni_network(CniConfig(conf_dir, plugin_dir), "ctrt-int", netns_dir=netns_dir) as att:
    print(att.netns_path, flush=True)
    sys.stdin.read()  # the "workload": runs until Ctrl-C
print("block left normally", flush=True)
"""


def _start_driver(pg: CniPlayground, config: CniConfig) -> subprocess.Popen[str]:
    # Its own session, so that killpg() below is a terminal's Ctrl-C to it and nobody else.
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(config.conf_dir), str(config.plugin_dir), str(pg.netns_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def _stop(driver: subprocess.Popen[str]) -> None:
    """After a failed assertion the driver may still hold a namespace: let it clean up before killing it."""
    if driver.poll() is None:
        os.killpg(driver.pid, signal.SIGINT)
        try:
            driver.wait(timeout=30)
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait()


def test_ctrl_c_in_the_block_tears_down(playground: CniPlayground) -> None:
    pg = playground
    config = _chain(pg)
    driver = _start_driver(pg, config)
    try:
        assert driver.stdout is not None
        netns = Path(driver.stdout.readline().strip())
        assert netns == pg.netns_dir / "ctrt-int"
        assert pg.fetch(netns)
        os.killpg(driver.pid, signal.SIGINT)
        rest, _ = driver.communicate(timeout=60)
    finally:
        _stop(driver)
    assert driver.returncode == -signal.SIGINT  # KeyboardInterrupt went through, after the cleanup
    assert rest == ""
    assert _plugin_log(pg)[-2:] == ["DEL ctrt-int eth0", "DEL done"]
    pg.assert_clean()


def test_ctrl_c_during_add_lets_the_plugin_finish_then_tears_down(playground: CniPlayground) -> None:
    """Killing a plugin halfway could leak what it set up: it finishes, then DEL undoes everything."""
    pg = playground
    gate = pg.tmp / "gate.sock"
    config = _chain(pg, gate=str(gate))
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(gate))
        server.listen(1)
        server.settimeout(60)
        driver = _start_driver(pg, config)
        try:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(60)
                assert conn.recv(16) == b"started"  # the scripted plugin is inside its ADD
                os.killpg(driver.pid, signal.SIGINT)
                conn.sendall(b"go")
            out, _ = driver.communicate(timeout=60)
        finally:
            _stop(driver)
    assert driver.returncode == -signal.SIGINT
    assert out == ""  # the block never ran
    assert _plugin_log(pg) == ["ADD ctrt-int eth0", "ADD done", "DEL ctrt-int eth0", "DEL done"]
    pg.assert_clean()
