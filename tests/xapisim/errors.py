"""XAPI API errors as xapi sends them: ``ErrorDescription = [CODE, param, ...]``, all strings."""


class ApiError(Exception):
    def __init__(self, code, *params):
        super().__init__(code, *params)
        self.code = code
        self.params = [str(p) for p in params]

    @property
    def description(self):
        return [self.code, *self.params]

    def __str__(self):
        return f"{self.code}{self.params}"


def handle_invalid(cls, ref):
    # xapi names the database table, which is the class name as the datamodel spells it.
    return ApiError("HANDLE_INVALID", cls, ref)


def bad_power_state(vm_ref, expected, actual):
    return ApiError("VM_BAD_POWER_STATE", vm_ref, expected.lower(), actual.lower())


def sr_full(requested, maximum):
    # Real SMAPIv1 SRs raise this backend failure rather than the declared SR_FULL.
    del requested, maximum
    return ApiError("SR_BACKEND_FAILURE_44", "", "There is insufficient space", "")
