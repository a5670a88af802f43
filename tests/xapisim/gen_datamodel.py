"""Generate ``datamodel.json`` (the simulator's object model and method table) from xen-api's
``doc/data/xenapi.json``.

    python tests/xapisim/gen_datamodel.py ../shared/reference/xenapi.json

The output keeps only what the simulator dispatches on: each class's live fields (type, qualifier,
default) and each message's parameters, result type, RBAC roles and whether xapi generates it.
``tests/sim/test_datamodel.py`` checks the committed file still matches the reference.
"""

import json
import sys
from pathlib import Path

OUT = Path(__file__).with_name("datamodel.json")


def compact(spec):
    classes = {}
    enums = {}
    for cls in spec:
        fields = [
            [f["name"], f["type"], f["qualifier"], f.get("default")]
            for f in cls["fields"]
            if not f["lifecycle"]["state"].startswith("Removed")
        ]
        messages = {}
        for m in cls["messages"]:
            params = [[p["name"], p["type"]] for p in m["params"]]
            if params and params[0][1] == "session ref":
                params = params[1:]
                needs_session = True
            else:
                needs_session = False
            messages[m["name"]] = {
                "params": params,
                "session": needs_session,
                "result": m["result"][0],
                "roles": m["roles"],
                "implicit": m["implicit"],
                "errors": [e["name"] for e in m["errors"]],
            }
        for e in cls.get("enums", []):
            enums[e["name"]] = [v["name"] for v in e["values"]]
        classes[cls["name"]] = {"fields": fields, "messages": messages}
    return {"classes": classes, "enums": enums}


def main(argv):
    source = Path(argv[1] if len(argv) > 1 else Path(__file__).parents[3] / "shared/reference/xenapi.json")
    model = compact(json.loads(source.read_text()))
    OUT.write_text(json.dumps(model, separators=(",", ":"), sort_keys=True) + "\n")
    print(f"wrote {OUT} ({len(model['classes'])} classes)")


if __name__ == "__main__":
    main(sys.argv)
