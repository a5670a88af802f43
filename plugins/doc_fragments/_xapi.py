"""Connection options of every module that talks to XAPI (see ``module_utils/_xapi_options.py``)."""


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  hostname:
    description:
      - The pool master to connect to, as a host name or address (V(xcp1.example.org), V(192.0.2.10:8443)) or
        as a URL (V(https://xcp1.example.org)).
      - Without a scheme the module uses C(https://); it uses plain C(http://) only when written out.
      - If this names a pool member, the module logs in to the pool master that the member names instead,
        keeping the scheme and port.
      - If not set, the module reads the environment variable E(XAPI_HOST).
    type: str
    required: true
  username:
    description:
      - The user to log in as. Read-only accounts are enough for information modules.
      - If not set, the module reads the environment variable E(XAPI_USERNAME).
    type: str
    default: root
  password:
    description:
      - The password of O(username).
      - If not set, the module reads the environment variable E(XAPI_PASSWORD).
    type: str
    required: true
  validate_certs:
    description:
      - Whether to check the pool's TLS certificate.
      - XCP-ng and XenServer hosts ship self-signed certificates; rather than setting this to V(false),
        point O(ca_path) at that certificate or at the CA that signed it.
      - If not set, the module reads the environment variable E(XAPI_VALIDATE_CERTS).
    type: bool
    default: true
  ca_path:
    description:
      - A PEM file (or an OpenSSL hashed directory) with the CA certificates to trust for the pool's TLS
        certificate, instead of the system's CA store.
      - Used for the XML-RPC API and for the HTTP transfers alike. Ignored when O(validate_certs=false).
      - If not set, the module reads the environment variable E(XAPI_CA_PATH).
    type: path
  timeout:
    description:
      - Seconds to wait for the pool to accept a connection or answer a request before giving up.
      - If not set, the module reads the environment variable E(XAPI_TIMEOUT).
    type: int
    default: 60
notes:
  - The environment variables are read on the host that runs the module. With C(delegate_to) that is the
    delegated host (the proxy), not the controller; pass values from the controller with
    P(ansible.builtin.env#lookup) lookups in C(module_defaults) instead.
  - The module logs out of XAPI at the end of the task, whether it succeeded or not.
requirements:
  - XenAPI >= 26.21.1 (the Python library, on the host that runs the module)
"""
