"""schemathesis hooks for scripts/check-openapi: the fuzzer's own account stays usable.

Each run is authenticated with one account's access token. A request that changes that
account's password, role or status, or deletes it, ends the token's session (by design) and
would leave the rest of the run answered 401, testing nothing. Those requests are not sent for
the fuzzer's own account (`PETMESH_FUZZ_OWN_ID`); the same operations on every other account
are, and the integration tests (tests/tests/api/users.rs) cover them on one's own account,
the last-admin refusal (409) included. check-openapi checks after each run that the token
still works.
"""

import os

import schemathesis

OWN_ID = os.environ.get("PETMESH_FUZZ_OWN_ID", "")
SESSION_ENDING_FIELDS = ("password", "role", "status")


@schemathesis.hook
def filter_case(context, case):
    if case.operation.path != "/api/v1/users/{id}":
        return True
    if str((case.path_parameters or {}).get("id", "")).lower() != OWN_ID.lower():
        return True
    method = case.method.upper()
    if method == "DELETE":
        return False
    if method == "PUT" and isinstance(case.body, dict):
        return all(case.body.get(field) is None for field in SESSION_ENDING_FIELDS)
    return True
