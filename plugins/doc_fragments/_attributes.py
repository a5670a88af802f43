"""Attribute descriptions shared by the collection's modules."""


class ModuleDocFragment:
    # Base descriptions; a module declares its own support level under attributes.
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
  diff_mode:
    description: Returns details on what changed (or would change in check mode) when run in diff mode.
"""

    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    details:
      - This module only reads, so it behaves the same in check mode.
  diff_mode:
    support: none
"""

    ACTION_GROUP_XAPI = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/xapi.proxy.xapi) in C(module_defaults) to set the connection options of this
      module once for a play.
    support: full
    membership:
      - xapi.proxy.xapi
"""
