"""Fixtures for module tests; the runner itself lives in ``tests/module_runner.py``."""

import pytest
from module_runner import run_module


@pytest.fixture(name="run_module")
def run_module_fixture():
    return run_module


@pytest.fixture
def connection(demo_sim):
    """Connection options for the shared demo lab, with certificate validation against its CA."""
    return {"hostname": demo_sim.url, "password": demo_sim.password, "ca_path": str(demo_sim.ca_path)}
