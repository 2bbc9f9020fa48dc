"""Pydantic shapes of the HTTP API (see docs/api.md), one module per resource,
as the routers of `server/api/` are; ORM tables live in models.py.

Input models derive from `_base._In` and validate with the validators of
`cast.protocol.validate`, so the CLI, the server and the worker refuse the
same things with the same messages. What crosses HTTP as a `cast.protocol`
type (the run spec, the lease, the heartbeat's answer, a worker's status
report, log stream names) is declared there once: answers embed those
dataclasses, and the input models that check a body (`RunCreate`,
`StatusIn`) hand the services that type.
"""
