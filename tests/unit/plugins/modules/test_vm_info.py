"""xapi.proxy.vm_info run as Ansible runs it, against the simulator's demo lab.

The demo lab (tests/xapisim/labs/demo.yml) holds web-01, db-01, test-01 and a template; these
tests assert on those and stay robust to VMs added to the lab later.
"""

import os
import shutil
import subprocess
from pathlib import Path

import ansible
import pytest

GIB = 1 << 30
COLLECTIONS = Path(__file__).resolve().parents[4] / "tests" / ".collections"
DEMO_VMS = {"web-01", "db-01", "test-01"}


def names(run):
    return [vm["name_label"] for vm in run.result["vms"]]


def by_name(run):
    return {vm["name_label"]: vm for vm in run.result["vms"]}


def assert_clean_failure(run, *fragments):
    """Failed through fail_json (rc 1, JSON, a message), not with a traceback."""
    assert run.rc == 1, run
    assert run.result is not None and run.result.get("failed") is True, run
    assert "Traceback" not in run.output, run
    assert "exception" not in run.result, run
    for fragment in fragments:
        assert fragment in run.result["msg"], run.result["msg"]


# -- listing -------------------------------------------------------------------------------------
def test_lists_demo_vms_without_templates_or_dom0(run_module, connection):
    run = run_module("vm_info", connection)
    assert run.rc == 0, run
    assert run.result["changed"] is False
    listed = set(names(run))
    assert listed >= DEMO_VMS
    assert "Debian Bookworm 12" not in listed
    assert not any(n.startswith("Control domain") for n in listed)
    assert not any(vm["is_a_template"] or vm["is_control_domain"] for vm in run.result["vms"])
    assert names(run) == sorted(names(run))


def test_record_fields_of_web_01(run_module, connection):
    run = run_module("vm_info", {**connection, "names": ["web-01"]})
    assert run.rc == 0, run
    (vm,) = run.result["vms"]
    assert vm["power_state"] == "Running"
    assert vm["tags"] == ["prod", "web"]
    assert vm["memory"] == 2 * GIB and vm["vcpus"] == 2
    assert vm["pool"]["name_label"] == "demo-pool" and vm["pool"]["uuid"]
    assert vm["host"]["name_label"] == "xcp-a" and vm["host"]["uuid"]
    assert vm["excluded_from_backup"] is False
    assert vm["xo_config"] == {}
    root, scratch = vm["disks"]
    assert (root["userdevice"], root["name_label"], root["virtual_size"]) == ("0", "web-01 root", 2 * GIB)
    assert root["sr"]["name_label"] == "Local storage" and root["uuid"]
    assert root["excluded_from_backup"] is False and root["bootable"] is True
    assert (scratch["userdevice"], scratch["name_label"]) == ("1", "[NOBAK] web-01 scratch")
    assert scratch["virtual_size"] == 512 << 20 and scratch["excluded_from_backup"] is True
    (vif,) = vm["vifs"]
    assert vif["mac"] == "02:16:3e:00:00:11"
    assert vif["device"] == "0"
    assert vif["network"]["name_label"] == "Pool-wide network associated with eth0"
    assert "OpaqueRef" not in run.stdout


def test_halted_vm_has_no_host_and_no_bak_flag(run_module, connection):
    run = run_module("vm_info", {**connection, "names": ["test-01", "db-01"]})
    vms = by_name(run)
    assert set(vms) == {"test-01", "db-01"}
    assert vms["test-01"]["host"] is None
    assert vms["test-01"]["excluded_from_backup"] is True
    assert [v["network"]["name_label"] for v in vms["db-01"]["vifs"]] == [
        "Pool-wide network associated with eth0",
        "storage-vlan-20",
    ]
    assert [d["name_label"] for d in vms["db-01"]["disks"]] == ["db-01 root", "db-01 data"]


def test_include_options_add_templates_and_control_domains(run_module, connection):
    run = run_module("vm_info", {**connection, "include_templates": True, "include_control_domain": True})
    listed = set(names(run))
    assert DEMO_VMS | {"Debian Bookworm 12", "Control domain on host: xcp-a", "Control domain on host: xcp-b"} <= listed
    template = by_name(run)["Debian Bookworm 12"]
    assert template["is_a_template"] is True and template["is_a_snapshot"] is False


# -- filters -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "present", "absent"),
    [
        ({"tags": ["web", "db"]}, {"web-01", "db-01"}, {"test-01"}),
        ({"tags": ["prod"], "exclude_tags": ["db"]}, {"web-01"}, {"db-01", "test-01"}),
        ({"exclude_tags": ["xo:no-bak"]}, {"web-01", "db-01"}, {"test-01"}),
        ({"power_states": ["halted"]}, {"test-01"}, {"web-01", "db-01"}),
        ({"power_states": ["RUNNING", "Suspended"]}, {"web-01", "db-01"}, {"test-01"}),
        ({"names": ["db-01"], "tags": ["web"]}, set(), {"web-01", "db-01", "test-01"}),
        ({"query": "[?memory > `2147483648`]"}, {"db-01"}, {"web-01", "test-01"}),
        ({"query": "[?disks[?name_label == 'web-01 root']]"}, {"web-01"}, {"db-01", "test-01"}),
        (
            {"tags": ["prod"], "query": "[?power_state == 'Running' && length(disks) == `2`]"},
            {"web-01", "db-01"},
            {"test-01"},
        ),
    ],
)
def test_filters(run_module, connection, options, present, absent):
    run = run_module("vm_info", {**connection, **options})
    assert run.rc == 0, run
    listed = set(names(run))
    assert present <= listed
    assert not absent & listed


def test_names_and_uuids_match_either_and_warn_on_unknown(run_module, connection):
    db = by_name(run_module("vm_info", {**connection, "names": ["db-01"]}))["db-01"]
    unknown = "00000000-0000-0000-0000-000000000000"
    run = run_module("vm_info", {**connection, "names": ["web-01", "no-such-vm"], "uuids": [db["uuid"], unknown]})
    assert run.rc == 0, run
    assert sorted(names(run)) == ["db-01", "web-01"]
    assert any("no-such-vm" in w and "demo-pool" in w for w in run.warnings), run.warnings
    assert any(unknown in w for w in run.warnings), run.warnings


def test_query_can_sort_and_slice(run_module, connection):
    run = run_module("vm_info", {**connection, "tags": ["prod"], "query": "reverse(sort_by(@, &memory))[:1]"})
    assert run.rc == 0, run
    assert names(run) == ["db-01"]


def test_check_mode_lists_the_same(run_module, connection):
    run = run_module("vm_info", {**connection, "names": ["web-01"], "_ansible_check_mode": True})
    assert run.rc == 0, run
    assert names(run) == ["web-01"] and run.result["changed"] is False


# -- bad input -----------------------------------------------------------------------------------
def test_invalid_query_fails_with_cause_and_example(run_module, connection):
    run = run_module("vm_info", {**connection, "query": "[?memory > 1"})
    assert_clean_failure(run, "not a valid JMESPath expression", "[?memory > 1", "backticks")


def test_projection_query_is_refused(run_module, connection):
    run = run_module("vm_info", {**connection, "query": "[].name_label"})
    assert_clean_failure(run, "must return VM records", "[].name_label")


def test_query_type_error_is_reported(run_module, connection):
    run = run_module("vm_info", {**connection, "query": "[?starts_with(memory, 'x')]"})
    assert_clean_failure(run, "failed on the VM records")


def test_unknown_power_state_fails_before_connecting(run_module, closed_port):
    # The host is unreachable: a power-state message proves the options were checked first.
    run = run_module(
        "vm_info", {"hostname": f"127.0.0.1:{closed_port}", "password": "irrelevant", "power_states": ["runing"]}
    )
    assert_clean_failure(run, "'runing' is not a VM power state", "halted, paused, running, suspended")


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"timeout": 0}, "timeout must be a positive number of seconds"),
        ({"hostname": "https://root:Secret-In-Url@127.0.0.1"}, "must not contain credentials"),
        ({"hostname": "ftp://127.0.0.1"}, "uses the scheme ftp://"),
    ],
)
def test_bad_connection_options_fail_before_connecting(run_module, closed_port, options, fragment):
    run = run_module("vm_info", {"hostname": f"127.0.0.1:{closed_port}", "password": "irrelevant", **options})
    assert_clean_failure(run, fragment)
    assert "Secret-In-Url" not in run.output


def test_missing_hostname_is_a_clear_error(run_module):
    run = run_module("vm_info", {"password": "x"})
    assert_clean_failure(run, "hostname")


# -- authentication and authorization ------------------------------------------------------------
def test_a_no_bak_tag_with_a_reason_excludes_the_vm_as_backups_do(run_module, connection, demo_sim):
    # Xen Orchestra tags its health-check VMs "xo:no-bak=Health Check": backups skip them, so say so.
    with demo_sim.xapi() as x:
        ref = x.VM.get_by_name_label("test-01")[0]
        x.VM.add_tags(ref, "xo:no-bak=Health Check")
        try:
            run = run_module("vm_info", {**connection, "names": ["test-01", "web-01"]})
        finally:
            x.VM.remove_tags(ref, "xo:no-bak=Health Check")
    assert run.rc == 0, run
    vms = by_name(run)
    assert (vms["test-01"]["excluded_from_backup"], vms["web-01"]["excluded_from_backup"]) == (True, False)


def test_wrong_password_fails_with_sentence_and_never_shows_it(run_module, demo_sim):
    secret = "Wr0ng-Passw0rd-7f3a"
    run = run_module(
        "vm_info", {"hostname": demo_sim.url, "password": secret, "ca_path": demo_sim.ca_path, "_ansible_verbosity": 4}
    )
    assert_clean_failure(run, f"Login to {demo_sim.url} as root failed: wrong user name or password")
    assert run.result["xapi_error"][0] == "SESSION_AUTHENTICATION_FAILED"
    assert secret not in run.output
    assert "********" not in run.result["msg"]  # never even put there for Ansible to mask


def test_read_only_user_can_list(run_module, demo_sim):
    run = run_module(
        "vm_info",
        {
            "hostname": demo_sim.url,
            "username": demo_sim.ro_username,
            "password": demo_sim.ro_password,
            "ca_path": demo_sim.ca_path,
        },
    )
    assert run.rc == 0, run
    assert set(names(run)) >= DEMO_VMS


def test_pool_member_redirects_to_master(run_module, demo_sim):
    run = run_module(
        "vm_info",
        {"hostname": demo_sim.member_url, "password": demo_sim.password, "ca_path": demo_sim.ca_path},
    )
    assert run.rc == 0, run
    assert set(names(run)) >= DEMO_VMS


# -- reachability and TLS --------------------------------------------------------------------------
def test_closed_port_fails_fast_and_clearly(run_module, closed_port):
    run = run_module("vm_info", {"hostname": f"127.0.0.1:{closed_port}", "password": "x", "timeout": 5})
    assert_clean_failure(run, f"Cannot connect to https://127.0.0.1:{closed_port}: connection refused")
    assert run.elapsed < 30


def test_silent_host_times_out_within_the_timeout(run_module, silent_port):
    run = run_module("vm_info", {"hostname": f"127.0.0.1:{silent_port}", "password": "x", "timeout": 2})
    assert_clean_failure(run, f"https://127.0.0.1:{silent_port} did not answer within 2 seconds", "timeout")
    assert run.elapsed < 20


def test_tls_without_ca_path_names_the_certificate_problem(run_module, demo_sim):
    run = run_module("vm_info", {"hostname": demo_sim.url, "password": demo_sim.password})
    assert_clean_failure(run, f"TLS certificate check of {demo_sim.url} failed", "ca_path", "validate_certs")


def test_tls_with_unrelated_ca_is_rejected(run_module, demo_sim, tmp_path):
    from xapisim.tls import certificate  # noqa: PLC0415 - the simulator's certificate maker, for another CA

    other, _ = certificate(tmp_path / "other", ["127.0.0.1"])
    run = run_module("vm_info", {"hostname": demo_sim.url, "password": demo_sim.password, "ca_path": str(other)})
    assert_clean_failure(run, "TLS certificate check", str(other))


def test_validate_certs_false_skips_the_check(run_module, demo_sim):
    run = run_module("vm_info", {"hostname": demo_sim.url, "password": demo_sim.password, "validate_certs": False})
    assert run.rc == 0, run
    assert set(names(run)) >= DEMO_VMS


def test_http_scheme_is_used_only_when_given(run_module, demo_sim):
    # The simulator speaks TLS only here, so plain HTTP must fail: proof that http:// was honoured.
    run = run_module("vm_info", {"hostname": demo_sim.url.replace("https://", "http://"), "password": "x"})
    assert_clean_failure(run, demo_sim.url.replace("https://", "http://"))


def test_missing_ca_file_is_reported(run_module, demo_sim, tmp_path):
    run = run_module(
        "vm_info", {"hostname": demo_sim.url, "password": demo_sim.password, "ca_path": str(tmp_path / "none.pem")}
    )
    assert_clean_failure(run, "ca_path", "does not exist")


# -- environment fallbacks -------------------------------------------------------------------------
def test_connection_options_come_from_the_environment(run_module, demo_sim):
    env = {
        "XAPI_HOST": demo_sim.member_url,
        "XAPI_USERNAME": demo_sim.ro_username,
        "XAPI_PASSWORD": demo_sim.ro_password,
        "XAPI_CA_PATH": str(demo_sim.ca_path),
    }
    run = run_module("vm_info", {"names": ["web-01"]}, env=env)
    assert run.rc == 0, run
    assert names(run) == ["web-01"]
    assert demo_sim.ro_password not in run.output


def test_validate_certs_from_the_environment(run_module, demo_sim):
    env = {"XAPI_HOST": demo_sim.url, "XAPI_PASSWORD": demo_sim.password, "XAPI_VALIDATE_CERTS": "false"}
    assert run_module("vm_info", {"names": ["web-01"]}, env=env).rc == 0
    env["XAPI_VALIDATE_CERTS"] = "true"
    assert_clean_failure(run_module("vm_info", {"names": ["web-01"]}, env=env), "TLS certificate check")


def test_timeout_from_the_environment(run_module, silent_port):
    env = {"XAPI_HOST": f"127.0.0.1:{silent_port}", "XAPI_PASSWORD": "x", "XAPI_TIMEOUT": "1"}
    run = run_module("vm_info", {}, env=env)
    assert_clean_failure(run, "did not answer within 1 seconds")


def test_task_options_override_the_environment(run_module, demo_sim):
    env = {"XAPI_HOST": "127.0.0.1:9", "XAPI_PASSWORD": "wrong-password", "XAPI_USERNAME": "nobody"}
    run = run_module(
        "vm_info",
        {"hostname": demo_sim.url, "password": demo_sim.password, "username": "root", "ca_path": demo_sim.ca_path},
        env=env,
    )
    assert run.rc == 0, run


# -- secrets ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("scenario", ["success", "bad-query", "rbac-user", "closed-port"])
def test_password_never_appears_even_when_debugging(run_module, demo_sim, closed_port, scenario):
    args = {"hostname": demo_sim.url, "password": demo_sim.password, "ca_path": demo_sim.ca_path}
    if scenario == "bad-query":
        args["query"] = "[?"
    elif scenario == "rbac-user":
        args.update(username=demo_sim.ro_username, password=demo_sim.ro_password)
    elif scenario == "closed-port":
        args["hostname"] = f"127.0.0.1:{closed_port}"
    args.update(_ansible_verbosity=4, _ansible_debug=True)
    run = run_module("vm_info", args, env={"ANSIBLE_DEBUG": "1"})
    assert run.result is not None, run
    assert args["password"] not in run.output
    assert "********" not in run.output
    assert "session_id" not in run.output and "OpaqueRef" not in run.output


# -- missing libraries -----------------------------------------------------------------------------
BLOCK_IMPORT = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == {lib!r}:
            raise ImportError('No module named ' + repr(name))
sys.meta_path.insert(0, _Block())
"""


@pytest.mark.parametrize("lib", ["XenAPI", "jmespath"])
def test_missing_library_is_reported_not_a_traceback(run_module, lib):
    run = run_module("vm_info", {"hostname": "127.0.0.1:9", "password": "x"}, prelude=BLOCK_IMPORT.format(lib=lib))
    assert run.rc == 1, run
    assert f"Failed to import the required Python library ({lib})" in run.result["msg"]
    assert "Traceback" not in run.stderr


# -- oldest supported Python on the proxy ------------------------------------------------------------
def _python39():
    """An interpreter for Python 3.9 with the module's libraries, or None (set XAPI_PROXY_TEST_PY39 to one)."""
    for candidate in (os.environ.get("XAPI_PROXY_TEST_PY39"), shutil.which("python3.9")):
        if not candidate:
            continue
        probe = subprocess.run(
            [candidate, "-c", "import sys, XenAPI, requests, jmespath; assert sys.version_info[:2] == (3, 9)"],
            check=False,
            capture_output=True,
        )
        if probe.returncode == 0:
            return candidate
    return None


def test_runs_on_python_3_9(run_module, connection, tmp_path):
    python = _python39()
    if python is None:
        pytest.skip("no Python 3.9 with XenAPI, requests and jmespath (set XAPI_PROXY_TEST_PY39)")
    # ansible-core's module_utils support Python 3.8+ on targets; expose this ansible package to 3.9.
    (tmp_path / "ansible").symlink_to(Path(ansible.__file__).parent)
    env = {"PYTHONPATH": os.pathsep.join([str(COLLECTIONS), str(tmp_path)])}
    run = run_module("vm_info", {**connection, "names": ["web-01"], "query": "[?memory > `0`]"}, env=env, python=python)
    assert run.rc == 0, run
    assert names(run) == ["web-01"]
    failed = run_module("vm_info", {**connection, "power_states": ["nope"]}, env=env, python=python)
    assert_clean_failure(failed, "'nope' is not a VM power state")
