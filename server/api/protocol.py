"""GET /api/v1/protocol/statuses: the run status vocabulary for clients that show it.

Public protocol data, like the OpenAPI document: it needs no token, so the web
viewer can load it before anyone signs in. The answer is `status_table()` of
`cast.protocol.status`, so the viewer keeps no copy of its own.
"""

from fastapi import APIRouter

from cast.protocol.status import StatusTable, status_table

router = APIRouter(prefix="/protocol", tags=["protocol"])


@router.get("/statuses", response_model=StatusTable)
async def statuses() -> StatusTable:
    return status_table()
