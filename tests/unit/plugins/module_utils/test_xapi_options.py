"""The connection argspec, its doc fragment and the module base agree with each other."""

import re

import pytest
import yaml

from ansible_collections.xapi.proxy.plugins.doc_fragments._xapi import ModuleDocFragment
from ansible_collections.xapi.proxy.plugins.module_utils._module_base import MIN_XENAPI, xenapi_version_warning
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_options import ConnectionOptions, argument_spec

DOCS = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"]


def test_every_option_is_documented_with_the_same_type_default_and_requirement():
    spec = argument_spec()
    assert set(spec) == set(DOCS)
    for name, option in spec.items():
        doc = DOCS[name]
        assert doc["type"] == option["type"], name
        assert doc.get("default") == option.get("default"), name
        assert bool(doc.get("required")) == bool(option.get("required")), name


def test_each_option_falls_back_to_the_environment_variable_its_doc_names():
    for name, option in argument_spec().items():
        _, (variable,) = option["fallback"]
        assert variable.startswith("XAPI_"), name
        documented = re.findall(r"E\((XAPI_[A-Z_]+)\)", " ".join(DOCS[name]["description"]))
        assert documented == [variable], name


def test_password_is_no_log():
    spec = argument_spec()
    assert spec["password"]["no_log"] is True
    assert not any(o.get("no_log") for n, o in spec.items() if n != "password")


def test_argument_spec_is_a_fresh_copy():
    spec = argument_spec()
    spec["hostname"]["required"] = False
    assert argument_spec()["hostname"]["required"] is True


def test_connection_options_from_params():
    opts = ConnectionOptions.from_params(
        {"hostname": "xcp1:8443", "username": None, "password": "pw", "validate_certs": False, "timeout": 9}
    )
    assert (opts.url.url, opts.username, opts.validate_certs, opts.ca_path, opts.timeout) == (
        "https://xcp1:8443",
        "root",
        False,
        None,
        9,
    )


def test_connection_options_repr_hides_the_password():
    opts = ConnectionOptions.from_params({"hostname": "h", "password": "Very-Secret-1"})
    assert "Very-Secret-1" not in repr(opts)


@pytest.mark.parametrize("timeout", [0, -5])
def test_timeout_must_be_positive(timeout):
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        ConnectionOptions.from_params({"hostname": "h", "password": "p", "timeout": timeout})


@pytest.mark.parametrize(
    ("version", "warns"),
    [("26.21.1", False), ("26.22.0", False), ("27.0", False), ("26.21.0", True), ("24.1.2", True), ("dev", False)],
)
def test_old_xenapi_versions_get_a_warning(version, warns):
    text = xenapi_version_warning(version)
    assert bool(text) is warns
    if warns:
        assert version in text and ".".join(map(str, MIN_XENAPI)) in text and "CVE-2026-42491" in text
