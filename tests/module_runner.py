"""Run collection modules the way Ansible does: as a separate Python process reading an args file.

``run_module("vm_info", {...})`` starts ``python plugins/modules/vm_info.py args.json`` with the
collection on ``PYTHONPATH`` and returns its exit code and parsed JSON. Nothing is patched, so a
module test exercises argument parsing, the XenAPI SDK, TLS and the simulator for real.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLLECTIONS = ROOT / "tests" / ".collections"
# Variables a developer's shell may carry that would change what a module sees.
_SCRUBBED_ENV_PREFIXES = ("XAPI_", "ANSIBLE_")


class ModuleRun:
    """One module run: ``rc``, the parsed JSON ``result`` (``None`` if stdout was not JSON), raw output."""

    def __init__(self, rc, result, stdout, stderr, elapsed):
        self.rc = rc
        self.result = result
        self.stdout = stdout
        self.stderr = stderr
        self.elapsed = elapsed

    @property
    def output(self):
        """Everything the module printed, for "this must never appear" checks."""
        return self.stdout + self.stderr

    @property
    def warnings(self):
        """Warning texts, whether ansible-core returns them as strings or (2.19+) as event records."""
        texts = []
        for w in (self.result or {}).get("warnings", []):
            texts.append(w["event"]["msg"] if isinstance(w, dict) else str(w))
        return texts

    def __iter__(self):  # rc, result = run_module(...)
        return iter((self.rc, self.result))

    def __repr__(self):
        return f"ModuleRun(rc={self.rc}, result={self.result!r}, stderr={self.stderr[-2000:]!r})"


def module_env(env=None):
    """The environment a module subprocess gets: the caller's, minus XAPI_*/ANSIBLE_*, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_ENV_PREFIXES)}
    base["PYTHONPATH"] = os.pathsep.join([str(COLLECTIONS), *filter(None, [os.environ.get("PYTHONPATH")])])
    base["ANSIBLE_COLLECTIONS_PATH"] = str(COLLECTIONS)
    base.update(env or {})
    return base


def run_module(name, args, env=None, timeout=120, python=None, prelude=None):
    """Run module ``name`` with ``args`` (a dict of options, ``_ansible_*`` keys allowed).

    ``prelude`` is Python code run in the module process before the module itself (used to make
    a library unimportable); ``python`` overrides the interpreter.
    """
    path = ROOT / "plugins" / "modules" / f"{name}.py"
    with tempfile.TemporaryDirectory(prefix="xapi-proxy-module-") as tmp:
        args_file = Path(tmp) / "args.json"
        args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
        cmd = [python or sys.executable]
        if prelude:
            runner = Path(tmp) / "run.py"
            runner.write_text(
                f"{prelude}\nimport runpy, sys\nsys.argv = [{str(path)!r}, {str(args_file)!r}]\n"
                f"runpy.run_path({str(path)!r}, run_name='__main__')\n"
            )
            cmd.append(str(runner))
        else:
            cmd += [str(path), str(args_file)]
        start = time.monotonic()
        proc = subprocess.run(
            cmd, check=False, capture_output=True, text=True, timeout=timeout, env=module_env(env), cwd=tmp
        )
        elapsed = time.monotonic() - start
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        result = None
    return ModuleRun(proc.returncode, result, proc.stdout, proc.stderr, elapsed)
