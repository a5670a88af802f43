"""Fixtures for the simulator's own fidelity tests."""

import pytest


@pytest.fixture
def x(sim):
    with sim.xapi() as api:
        yield api
