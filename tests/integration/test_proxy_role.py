"""The proxy role end to end: deploy the VM from the controller, bootstrap the host over SSH, back up from it.

The "proxy" is this machine reached through a real OpenSSH server on loopback (``tests/ssh_server.py``):
the role deploys its VM into the simulator with ``xapi.proxy.appliance`` (from an XVA, with the static
address 127.0.0.1/8, which the simulated guest then reports), waits for SSH on that address, makes a
virtual environment with the collection's libraries (offline: the venv sees the already-installed
packages and pip may not download), registers a ``file://`` remote, and the play ends with
``xapi.proxy.backup`` run on the proxy, over SSH, with the venv's Python.
"""

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest
import yaml
from module_runner import module_env

from xapisim.pytest_plugin import DEMO_LAB

PLAYBOOK_TIMEOUT = 300


def ansible_playbook():
    beside = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    found = beside if os.access(beside, os.X_OK) else shutil.which("ansible-playbook")
    if not found:
        pytest.skip("ansible-playbook is not installed")
    return found


def export_xva(sim, name, dest):
    session = sim.session()
    try:
        uuid = session.xenapi.VM.get_uuid(session.xenapi.VM.get_by_name_label(name)[0])
        r = sim.http("GET", "/export", params={"session_id": session._session, "uuid": uuid}, stream=True)
        r.raise_for_status()
        with open(dest, "wb") as fh:
            for chunk in r.iter_content(1 << 20):
                fh.write(chunk)
    finally:
        session.xenapi.session.logout()
    return dest


def run_playbook(tmp_path, *args):
    env = module_env({
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(tmp_path / "cp"),
    })  # fmt: skip
    done = subprocess.run(
        [ansible_playbook(), "-i", str(tmp_path / "inventory.yml"), str(tmp_path / "site.yml"), *args],
        capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    return done


def recap(output, host):
    line = next(line for line in output.splitlines() if line.startswith(host) and "ok=" in line)
    return dict(part.split("=") for part in line.split(":", 1)[1].split())


def test_role_deploys_bootstraps_and_backs_up_over_ssh(ssh_server, sim_factory, tmp_path):
    sim = sim_factory(lab=DEMO_LAB)
    xva = export_xva(sim, "test-01", tmp_path / "proxy.xva")
    backups = tmp_path / "backups"
    backups.mkdir()
    xapi = {"hostname": sim.url, "password": sim.password, "ca_path": str(sim.ca_path)}
    proxy = {
        "ansible_host": "192.0.2.254",  # nothing there: the address comes from the deployed VM
        "ansible_port": ssh_server.port,
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(ssh_server.client_key),
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        "ansible_python_interpreter": sys.executable,
        "proxy_deploy": True,
        "proxy_xapi": xapi,
        "proxy_appliance": {
            "xva_path": str(xva),
            "site": "loopback",
            "network": "Pool-wide network associated with eth0",
            "ip": "127.0.0.1/8",
            "ssh_authorized_keys": [ssh_server.client_key.with_suffix(".pub").read_text().strip()],
            "wait_timeout": 30,
        },
        "proxy_ssh_wait_timeout": 30,
        "proxy_system_packages": [],
        "proxy_venv": str(tmp_path / "venv"),
        "proxy_venv_python": sys.executable,
        "proxy_venv_system_site_packages": True,
        "proxy_pip_extra_args": "--no-index",  # offline: what the venv needs is already installed
        "proxy_remotes": [{"name": "site", "url": f"file://{backups}", "test": True}],
        "proxy_remotes_dir": str(tmp_path / "remotes"),
    }
    inventory = {"all": {
        "hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}},
        "children": {"proxies": {"hosts": {"proxy-test": proxy}}},
    }}  # fmt: skip
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory))
    result_file = tmp_path / "result.json"
    play = [
        {"import_playbook": "xapi.proxy.deploy_proxy"},
        {
            "name": "Back up a VM from the proxy",
            "hosts": "proxies",
            "gather_facts": False,
            "tags": ["backup"],
            "tasks": [
                {"name": "Back up web-01 to the registered remote",
                 "xapi.proxy.backup": {**xapi, "job": "nightly", "mode": "full", "names": ["web-01"],
                                       "remotes": ["site"], "remotes_dir": str(tmp_path / "remotes"),
                                       "progress_dir": str(tmp_path / "progress")},
                 "register": "proxy_test_backup"},
                {"name": "Hand the results to the test",
                 "ansible.builtin.copy": {"dest": str(result_file), "mode": "0600", "content": "{{ {'backup': "
                                          "proxy_test_backup, 'interpreter': ansible_python_interpreter, 'facts': "
                                          "proxy_facts, 'host': ansible_host} | to_json }}"},
                 "delegate_to": "localhost"},
            ],
        },
    ]  # fmt: skip
    (tmp_path / "site.yml").write_text(yaml.safe_dump(play, sort_keys=False))

    done = run_playbook(tmp_path)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert recap(done.stdout, "proxy-test")["failed"] == "0"
    result = json.loads(result_file.read_text())
    # The VM was deployed and the play followed the address it reported, over SSH with the client key.
    assert result["host"] == "127.0.0.1"
    assert result["facts"]["vm"]["ip"] == "127.0.0.1" and result["facts"]["vm"]["site"] == "loopback"
    assert "Accepted publickey for root" in ssh_server.log.read_text()
    # The backup ran with the venv's Python, to the remote registered by name.
    venv_python = str(tmp_path / "venv" / "bin" / "python")
    assert result["interpreter"] == venv_python and os.access(venv_python, os.X_OK)
    assert result["facts"]["python"] == venv_python and result["facts"]["remotes"] == ["site"]
    vm = result["backup"]["vms"][0]
    assert vm["name"] == "web-01" and vm["status"] == "success"
    assert (backups / vm["backup_id"]).is_file()
    registration = tmp_path / "remotes" / "site.json"
    assert stat.S_IMODE(registration.stat().st_mode) == 0o600
    assert sim.password not in done.stdout

    # Again, as for an existing machine (no deployment, no XAPI call): nothing changes.
    again = run_playbook(tmp_path, "-e", "proxy_deploy=false", "-e", "ansible_host=127.0.0.1", "--skip-tags", "backup")
    assert again.returncode == 0, again.stdout[-6000:] + again.stderr[-3000:]
    counts = recap(again.stdout, "proxy-test")
    assert (counts["changed"], counts["failed"]) == ("0", "0"), again.stdout[-4000:]
    assert "Deploy or update the proxy VM" not in again.stdout
