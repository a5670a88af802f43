"""Collection metadata that tools check only partly offline: action groups, EE files, requirements."""

import re
from pathlib import Path

import yaml

from ansible_collections.xapi.proxy.plugins.doc_fragments._vm_selection import ModuleDocFragment as SelectionDocs
from ansible_collections.xapi.proxy.plugins.module_utils._vm_selection import argument_spec as selection_spec

ROOT = Path(__file__).resolve().parents[4]
MODULES = sorted((ROOT / "plugins" / "modules").glob("*.py"))


def load(path):
    return yaml.safe_load((ROOT / path).read_text())


def documentation(module):
    source = module.read_text()
    return yaml.safe_load(re.search(r'DOCUMENTATION = r"""(.*?)"""', source, re.DOTALL).group(1))


def test_action_group_holds_exactly_the_modules_that_talk_to_xapi():
    talks_to_xapi = {m.stem for m in MODULES if "XapiModule(" in m.read_text()}
    assert talks_to_xapi, "no module uses XapiModule"
    assert set(load("meta/runtime.yml")["action_groups"]["xapi"]) == talks_to_xapi
    for module in MODULES:
        fragments = documentation(module).get("extends_documentation_fragment", [])
        assert ("xapi.proxy._attributes.ACTION_GROUP_XAPI" in fragments) == (module.stem in talks_to_xapi), module
        assert ("xapi.proxy._xapi" in fragments) == (module.stem in talks_to_xapi), module


def test_requires_ansible():
    assert load("meta/runtime.yml")["requires_ansible"] == ">=2.17.0"


def test_execution_environment_files_exist_and_ship():
    ee = load("meta/execution-environment.yml")
    assert ee["version"] == 3
    ignored = load("galaxy.yml")["build_ignore"]
    for path in (ee["dependencies"]["python"], ee["dependencies"]["system"]):
        assert (ROOT / path).is_file(), path
        assert path not in ignored


def test_runtime_requirements_use_lower_bounds_only():
    lines = [
        line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines() if line.strip()
    ]
    requirements = [line for line in lines if line]
    names = {re.split(r"[<>=!~ ]", r)[0].lower() for r in requirements}
    assert {"xenapi", "requests", "jmespath"} <= names
    assert "ansible-core" not in names and "ansible" not in names  # the EE brings its own
    assert "XenAPI>=26.21.1" in requirements
    for requirement in requirements:
        assert not re.search(r"<|==|~=|!=", requirement), requirement


def test_galaxy_metadata():
    galaxy = load("galaxy.yml")
    assert (galaxy["namespace"], galaxy["name"], galaxy["license"]) == ("xapi", "proxy", ["GPL-3.0-or-later"])
    assert (ROOT / galaxy["readme"]).is_file()
    for path in ("tests/.collections", "tests/output", ".ci"):
        assert path in galaxy["build_ignore"]


def test_selection_options_match_their_doc_fragment():
    docs = yaml.safe_load(SelectionDocs.DOCUMENTATION)["options"]
    spec = selection_spec()
    assert set(docs) == set(spec)
    for name, option in spec.items():
        assert docs[name]["type"] == option["type"], name
        assert docs[name].get("elements") == option.get("elements"), name
