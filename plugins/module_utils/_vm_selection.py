"""Pick VMs out of the inventory records (``_vm_inventory``) the way ``vm_info`` and ``backup`` do.

Filters apply in this order: kind (templates, snapshots and control domains are left out unless
asked for), ``names``/``uuids`` (either matches), ``tags`` (any of), ``exclude_tags``,
``power_states``, the ``xo:no-bak`` tag (alone or as ``xo:no-bak=<reason>``) when ``skip_no_backup`` is
set, and last the JMESPath ``query`` over the records that are left. The query must keep whole records
(a filter, a slice, a sort), because callers act on the VMs it returns.
"""

from __future__ import annotations

try:
    import jmespath
    from jmespath.exceptions import JMESPathError

    HAS_JMESPATH = True
except ImportError:  # reported by the module base with missing_required_lib
    jmespath = None
    JMESPathError = Exception
    HAS_JMESPATH = False

POWER_STATES = ("Halted", "Paused", "Running", "Suspended")
NO_BACKUP_TAG = "xo:no-bak"  # Xen Orchestra's tag: never back this VM up
NO_BACKUP_DISK_PREFIX = "[NOBAK]"  # Xen Orchestra's disk-name prefix: leave this disk out of backups
QUERY_EXAMPLE = "[?power_state=='Running' && memory > `1073741824`]"


def is_no_backup_tag(tag):
    """Xen Orchestra's rule: ``xo:no-bak`` alone or with a reason (``xo:no-bak=Health Check``)."""
    return tag == NO_BACKUP_TAG or tag.startswith(NO_BACKUP_TAG + "=")


def argument_spec():
    """The selection options shared by ``vm_info`` and ``backup`` (doc fragment ``_vm_selection``)."""
    return {
        "names": {"type": "list", "elements": "str"},
        "uuids": {"type": "list", "elements": "str"},
        "tags": {"type": "list", "elements": "str"},
        "exclude_tags": {"type": "list", "elements": "str"},
        "power_states": {"type": "list", "elements": "str"},
        "query": {"type": "str"},
    }


class SelectionError(ValueError):
    """A selection option is invalid; the message says which value and how to fix it."""


def is_nobak_disk(disk):
    """True when a disk record's name marks it to be left out of backups (``[NOBAK] …``)."""
    return str(disk.get("name_label", "")).startswith(NO_BACKUP_DISK_PREFIX)


def backup_disks(vm):
    """The disks of a VM record that a backup includes (all but ``[NOBAK]`` ones)."""
    return [d for d in vm["disks"] if not is_nobak_disk(d)]


def normalize_power_states(values):
    """Map ``running``/``RUNNING``/``Running`` to XAPI's spelling; reject anything else."""
    by_lower = {s.lower(): s for s in POWER_STATES}
    result = []
    for value in values or []:
        state = by_lower.get(str(value).strip().lower())
        if state is None:
            raise SelectionError(
                f"power_states: {value!r} is not a VM power state; use any of "
                f"{', '.join(s.lower() for s in POWER_STATES)} (case does not matter)"
            )
        result.append(state)
    return result


def compile_query(query):
    """Compile a JMESPath ``query`` or raise :class:`SelectionError` saying what is wrong."""
    if query is None or not str(query).strip():
        return None
    if not HAS_JMESPATH:
        raise SelectionError("query needs the Python library jmespath on the host running this module")
    try:
        return jmespath.compile(query)
    except JMESPathError as e:
        raise SelectionError(
            f"query {query!r} is not a valid JMESPath expression ({_one_line(e)}). Write a filter over the VM "
            f"list such as {QUERY_EXAMPLE} (numbers and lists go in backticks, strings in single quotes)."
        ) from None


def _one_line(exc):
    return " ".join(str(exc).split())


class SelectionResult:
    """The selected VM records plus the ``names``/``uuids`` that matched no VM at all."""

    def __init__(self, vms, missing_names, missing_uuids):
        self.vms = vms
        self.missing_names = missing_names
        self.missing_uuids = missing_uuids


class VmSelection:
    """Validated selection options; :meth:`select` applies them to inventory records."""

    def __init__(
        self,
        names=None,
        uuids=None,
        tags=None,
        exclude_tags=None,
        power_states=None,
        query=None,
        include_control_domain=False,
        include_templates=False,
        include_snapshots=False,
        skip_no_backup=False,
    ):
        self.names = list(names or [])
        self.uuids = [str(u).strip().lower() for u in uuids or []]
        self.tags = list(tags or [])
        self.exclude_tags = list(exclude_tags or [])
        self.power_states = normalize_power_states(power_states)
        self.query_text = query
        self.query = compile_query(query)
        self.include_control_domain = include_control_domain
        self.include_templates = include_templates
        self.include_snapshots = include_snapshots
        self.skip_no_backup = skip_no_backup

    @classmethod
    def from_params(cls, params, skip_no_backup=False):
        """From module params named as in ``vm_info`` (missing keys mean "no filter")."""
        return cls(
            names=params.get("names"),
            uuids=params.get("uuids"),
            tags=params.get("tags"),
            exclude_tags=params.get("exclude_tags"),
            power_states=params.get("power_states"),
            query=params.get("query"),
            include_control_domain=bool(params.get("include_control_domain")),
            include_templates=bool(params.get("include_templates")),
            include_snapshots=bool(params.get("include_snapshots")),
            skip_no_backup=skip_no_backup,
        )

    def _kind_ok(self, vm):
        if vm["is_control_domain"]:
            return self.include_control_domain
        if vm["is_a_snapshot"]:
            return self.include_snapshots
        if vm["is_a_template"]:
            return self.include_templates
        return True

    def select(self, records):
        """Apply the filters to ``records`` (inventory VM records); returns a :class:`SelectionResult`."""
        candidates = [vm for vm in records if self._kind_ok(vm)]
        known_names = {vm["name_label"] for vm in candidates}
        known_uuids = {vm["uuid"] for vm in candidates}
        missing_names = [n for n in self.names if n not in known_names]
        missing_uuids = [u for u in self.uuids if u not in known_uuids]

        selected = []
        for vm in candidates:
            if (self.names or self.uuids) and vm["name_label"] not in self.names and vm["uuid"] not in self.uuids:
                continue
            tags = set(vm["tags"])
            if self.tags and not tags.intersection(self.tags):
                continue
            if tags.intersection(self.exclude_tags):
                continue
            if self.power_states and vm["power_state"] not in self.power_states:
                continue
            if self.skip_no_backup and any(is_no_backup_tag(t) for t in tags):
                continue
            selected.append(vm)
        if self.query is not None:
            selected = self._apply_query(selected)
        return SelectionResult(selected, missing_names, missing_uuids)

    def _apply_query(self, vms):
        try:
            found = self.query.search(vms)
        except JMESPathError as e:
            raise SelectionError(
                f"query {self.query_text!r} failed on the VM records ({_one_line(e)}). Check the field names and "
                f"types against the vms return value, e.g. {QUERY_EXAMPLE}."
            ) from None
        if found is None:
            return []
        by_uuid = {vm["uuid"]: vm for vm in vms}
        if not isinstance(found, list) or not all(isinstance(x, dict) and x.get("uuid") in by_uuid for x in found):
            shape = type(found).__name__ if not isinstance(found, list) else "a list of values that are not VM records"
            raise SelectionError(
                f"query {self.query_text!r} returned {shape}; it must return VM records, so write a filter, "
                f"slice or sort over the list such as {QUERY_EXAMPLE}, not a projection like [].name_label."
            )
        seen, result = set(), []
        for item in found:
            if item["uuid"] not in seen:
                seen.add(item["uuid"])
                result.append(by_uuid[item["uuid"]])
        return result
