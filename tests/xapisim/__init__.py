"""xapisim: a XAPI (XCP-ng / XenServer management API) simulator for the collection's tests.

It speaks xapi's real wire protocol (XML-RPC over HTTP(S) plus the HTTP transfer handlers), with an
object model and method table generated from xen-api's datamodel (``datamodel.json``), so the real
``XenAPI`` SDK and ``requests`` talk to it exactly as they talk to a pool.
"""
