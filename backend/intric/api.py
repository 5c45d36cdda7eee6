"""FastAPI application factory."""

from __future__ import annotations

import asyncio
import logging
import uuid
from contextlib import asynccontextmanager
from typing import Callable

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from intric.jobs import job_to_json
from intric.services import RealServices, Services, within
from intric.settings import Settings

log = logging.getLogger("intric.api")

DB_TIMEOUT_S = 5.0


def unavailable(what: str) -> HTTPException:
    return HTTPException(status_code=503, detail=f"{what} unavailable")


class JobIn(BaseModel):
    text: str = Field(min_length=1, max_length=100_000)


def create_app(
    settings: Settings,
    services_factory: Callable[[Settings], Services] = RealServices,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.services = services_factory(settings)
        try:
            yield
        finally:
            await app.state.services.aclose()

    app = FastAPI(
        title="Intric",
        version=settings.version,
        lifespan=lifespan,
        openapi_url=f"{settings.api_prefix}/openapi.json",
        docs_url=f"{settings.api_prefix}/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    router = APIRouter(prefix=settings.api_prefix)

    def services(request: Request) -> Services:
        return request.app.state.services

    @router.get("/healthz")
    async def healthz(request: Request):
        svc = services(request)
        checks = {"postgres": svc.ping_postgres(), "redis": svc.ping_redis()}
        outcomes = await asyncio.gather(*checks.values(), return_exceptions=True)
        failed = []
        for name, outcome in zip(checks, outcomes):
            if isinstance(outcome, BaseException):
                failed.append(name)
                log.warning("healthz: %s check failed: %s", name, type(outcome).__name__)
        body = {
            "status": "unhealthy" if failed else "ok",
            "checks": {name: ("fail" if name in failed else "ok") for name in checks},
            "version": settings.version,
        }
        if failed:
            body["failed"] = failed
            return JSONResponse(body, status_code=503)
        return body

    @router.get("/version")
    async def version():
        return {"version": settings.version, "revision": settings.revision}

    @router.post("/jobs", status_code=202)
    async def create_job(job: JobIn, request: Request):
        svc = services(request)
        try:
            row = await within(svc.store.create(job.text), DB_TIMEOUT_S)
        except Exception as exc:
            log.error("could not store job: %s", type(exc).__name__)
            raise unavailable("database") from None
        job_id = str(row["id"])
        try:
            await svc.enqueue(job_id)
        except Exception as exc:
            log.error("could not enqueue job %s: %s", job_id, type(exc).__name__)
            try:
                await within(svc.store.fail(row["id"], "could not enqueue"), DB_TIMEOUT_S)
            except Exception:
                log.exception("could not mark job %s as failed", job_id)
            return JSONResponse({"id": job_id, "status": "failed", "detail": "queue unavailable"}, 503)
        return {"id": job_id, "status": "queued"}

    @router.get("/jobs/{job_id}")
    async def get_job(job_id: uuid.UUID, request: Request):
        try:
            row = await within(services(request).store.get(job_id), DB_TIMEOUT_S)
        except Exception as exc:
            log.error("could not read job %s: %s", job_id, type(exc).__name__)
            raise unavailable("database") from None
        if row is None:
            raise HTTPException(status_code=404, detail="job not found")
        return job_to_json(row)

    app.include_router(router)
    return app
