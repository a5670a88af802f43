"""The object model and method table come from xen-api's published datamodel, not from hand-typing."""

import json
from pathlib import Path

import pytest

from xapisim import gen_datamodel
from xapisim.model import Datamodel

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "xenapi.json"


@pytest.mark.skipif(not REFERENCE.exists(), reason=f"reference datamodel not present at {REFERENCE}")
def test_committed_model_matches_reference():
    expected = gen_datamodel.compact(json.loads(REFERENCE.read_text()))
    committed = json.loads(gen_datamodel.OUT.read_text())
    assert committed == expected, "run tests/xapisim/gen_datamodel.py to regenerate datamodel.json"


def test_model_has_every_class_and_typed_defaults():
    m = Datamodel()
    assert len(m.classes) == 67
    vdi = m.new_record("VDI")
    assert vdi["virtual_size"] == 0 and vdi["other_config"] == {} and vdi["SR"] == "OpaqueRef:NULL"
    vm = m.new_record("VM")
    assert vm["power_state"] == "Halted"
    assert vm["snapshot_time"] == "19700101T00:00:00Z"
    # Removed fields are not served, deprecated ones still are.
    assert "is_snapshot_from_vmpp" not in m.classes["VM"]
    assert "parent" in m.classes["VDI"]


def test_messages_carry_rbac_roles_and_async_forms():
    m = Datamodel()
    start = m.messages["VM.start"]
    assert "read-only" not in start.roles and "vm-operator" in start.roles
    assert "read-only" in m.messages["VM.get_record"].roles
    assert "VM.snapshot" in m.async_able
    assert "VM.get_record" not in m.async_able and "session.logout" not in m.async_able
