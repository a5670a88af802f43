"""Shared pytest set-up.

Collection code is imported as ``ansible_collections.xapi.proxy.…``, exactly as Ansible imports it, so
the repository root is exposed through ``tests/.collections/ansible_collections/xapi/proxy`` (a
symlink, git-ignored). ``tests`` itself is on ``sys.path`` so the simulator imports as ``xapisim``.
"""

import contextlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLLECTIONS = ROOT / "tests" / ".collections"


def _expose_collection():
    link = COLLECTIONS / "ansible_collections" / "xapi" / "proxy"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another xdist worker won the race
            link.symlink_to(ROOT, target_is_directory=True)
    for path in (str(COLLECTIONS), str(ROOT / "tests")):
        if path not in sys.path:
            sys.path.insert(0, path)
    # Ansible module subprocesses started by tests must see the same tree.
    os.environ["ANSIBLE_COLLECTIONS_PATH"] = str(COLLECTIONS)


_expose_collection()

pytest_plugins = ["xapisim.pytest_plugin", "servers"]
