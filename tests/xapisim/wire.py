"""XML-RPC as xapi writes it (ocaml-rpc with ``strict=false``).

Strings, refs, enums and int64 are bare ``<value>text</value>`` (so Python sees ints as ``str``);
bools are ``<boolean>``; floats ``<double>%.16g``; datetimes ``<dateTime.iso8601>``; sets arrays;
maps and records structs. API errors travel in the ``Status``/``ErrorDescription`` envelope, never
as ``<fault>``.
"""

import xmlrpc.client
from xml.sax.saxutils import escape

from .model import XDate

HEADER = '<?xml version="1.0"?>'


def value(v):
    if isinstance(v, bool):
        return f"<value><boolean>{int(v)}</boolean></value>"
    if isinstance(v, XDate):
        return f"<value><dateTime.iso8601>{v}</dateTime.iso8601></value>"
    if isinstance(v, str):
        return f"<value>{escape(v)}</value>"
    if isinstance(v, int):
        return f"<value>{v}</value>"
    if isinstance(v, float):
        return f"<value><double>{v:.16g}</double></value>"
    if isinstance(v, (list, tuple)):
        return "<value><array><data>" + "".join(value(x) for x in v) + "</data></array></value>"
    if isinstance(v, dict):
        members = "".join(f"<member><name>{escape(str(k))}</name>{value(x)}</member>" for k, x in v.items())
        return f"<value><struct>{members}</struct></value>"
    if v is None:
        return "<value></value>"
    raise TypeError(f"cannot encode {type(v).__name__}")


def success(result):
    body = value({"Status": "Success", "Value": "" if result is None else result})
    return f"{HEADER}<methodResponse><params><param>{body}</param></params></methodResponse>"


def failure(description):
    body = value({"Status": "Failure", "ErrorDescription": list(description)})
    return f"{HEADER}<methodResponse><params><param>{body}</param></params></methodResponse>"


def task_result(result):
    """A task's ``result`` field: ``Xmlrpc.to_string`` of the value, without the XML header."""
    return value("" if result is None else result)


def parse_call(body):
    params, method = xmlrpc.client.loads(body, use_builtin_types=False)
    return method, list(params)
