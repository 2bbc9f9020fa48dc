"""Routes of the S3 object store (CAST_STORAGE_URL): for workers, the plan and
the commit of an output push whose bytes go straight to the store, and the
files of a mount with presigned GETs; for users, the plan and the commit of
`cast upload`. With the filesystem store each answers 409: the worker and the
CLI push and fetch through the other routes."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from cast.protocol.objects import ObjectPlan
from cast.server.api.deps import (
    CurrentUser, DatabaseDep, RunId, SessionDep, SessionRoute, SettingsDep, WorkerAuth,
)
from cast.server.api.uploads import UploadName, upload_view
from cast.server.errors import Conflict
from cast.server.schemas.files import ObjectManifestIn, ObjectMountOut, OutputsPushed, UploadManifestIn, UploadOut
from cast.server.services import object_files
from cast.server.services.objectstore import ObjectStore, object_store
from cast.server.settings import Settings

router = APIRouter(tags=["objects"], route_class=SessionRoute)


def _store(settings: Settings) -> ObjectStore:
    store = object_store(settings)
    if store is None:
        raise Conflict("this server keeps its files on its own filesystem, not in an object store")
    return store


@router.post("/runs/{run_id}/outputs/plan", response_model=ObjectPlan)
async def plan_outputs(run_id: RunId, body: ObjectManifestIn, _: WorkerAuth, database: DatabaseDep,
                       settings: SettingsDep) -> dict:
    plan = await run_in_threadpool(object_files.plan_outputs, database, store=_store(settings),
                                   max_bytes=settings.max_output_bytes, run_id=run_id, manifest=body.to_manifest())
    return plan.to_dict()


@router.post("/runs/{run_id}/outputs/commit", response_model=OutputsPushed)
async def commit_outputs(run_id: RunId, body: ObjectManifestIn, _: WorkerAuth, database: DatabaseDep,
                         settings: SettingsDep) -> dict:
    count, size = await run_in_threadpool(object_files.commit_outputs, database, store=_store(settings),
                                          max_bytes=settings.max_output_bytes, run_id=run_id,
                                          manifest=body.to_manifest())
    return {"files": count, "size": size}


@router.get("/workers/objects/{resource:path}", response_model=ObjectMountOut)
def mount_objects(resource: str, _: WorkerAuth, session: SessionDep, settings: SettingsDep) -> dict:
    files, folders = object_files.mount_files(session, store=_store(settings), resource=resource)
    return {"files": [vars(f) for f in files], "folders": folders}


@router.post("/uploads/{name}/plan", response_model=ObjectPlan)
async def plan_upload(name: UploadName, body: UploadManifestIn, user: CurrentUser, database: DatabaseDep,
                      settings: SettingsDep) -> dict:
    plan = await run_in_threadpool(object_files.plan_upload, database, store=_store(settings),
                                   max_bytes=settings.max_upload_bytes, owner=user, name=name,
                                   manifest=body.to_manifest())
    return plan.to_dict()


@router.post("/uploads/{name}/commit", status_code=201, response_model=UploadOut)
async def commit_upload(name: UploadName, body: UploadManifestIn, user: CurrentUser, database: DatabaseDep,
                        settings: SettingsDep) -> dict:
    upload = await run_in_threadpool(object_files.commit_upload, database, store=_store(settings),
                                     max_bytes=settings.max_upload_bytes, owner=user, name=name,
                                     manifest=body.to_manifest())
    return upload_view(upload)
