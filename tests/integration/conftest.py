"""Fixtures of the playbook tests: the loopback sshd (``tests/ssh_server.py``)."""

from ssh_server import ssh_server  # noqa: F401 - a fixture, found by pytest through this import
