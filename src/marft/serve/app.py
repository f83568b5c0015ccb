"""``marft serve``: the team as an OpenAI-compatible HTTP endpoint (FastAPI), with a web page.

* ``GET /`` the page: type a task, watch each role's lane fill as its agent finishes, the final
  answer highlighted, the route drawn for routing teams.
* ``GET /v1/models`` the team and each agent alone (``TEAM/ROLE``).
* ``GET /health`` tasks in flight and waiting, generation calls and rows so far (no key needed).
* ``GET /v1/team`` the roles, who observes whom, the graded agents, routing (for the page).
* ``POST /v1/chat/completions`` one task (the last user message) through the team; requests in
  flight together are one batch (:class:`~marft.serve.worker.BatchWorker`); ``stream: true``
  sends each agent's message as an event when it is done.

Refused requests get 4xx with an OpenAI-style error body; a client that goes away frees its place
(its task leaves the batch before the next generation call).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from marft.rollout.live import AgentMessage, LiveTask, TeamReply
from marft.serve.openai_api import (
    ApiError,
    ChatRequest,
    ServeLimits,
    completion,
    final_events,
    message_event,
    new_id,
    parse_chat_request,
)
from marft.serve.team import ServedTeam
from marft.serve.worker import BatchWorker

DISCONNECT_POLL_S = 0.1
"""How often a waiting non-streamed request checks that its client is still there."""


def _error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body, status_code=e.status)


def team_info(team: ServedTeam) -> dict[str, Any]:
    """What the page draws: the roles in acting order, who each observes, the graded ones."""
    graph = team.graph
    return {
        "name": team.name,
        "trained": team.checkpoint is not None,
        "routing": graph.routing is not None,
        "agents": [
            {"role": a.role, "observes": list(a.observes), "graded": a.graded, "depth": a.depth}
            for a in graph.agents
        ],
    }


def create_app(
    team: ServedTeam,
    limits: ServeLimits | None = None,
    api_key: str | None = None,
    batch_wait_s: float = 0.005,
) -> FastAPI:
    """The server's app. Its batch worker starts with the app's lifespan and, on shutdown, finishes
    the tasks in flight before it stops."""
    limits = limits or ServeLimits()
    state: dict[str, BatchWorker] = {}
    page = resources.files("marft.serve").joinpath("page.html").read_text()
    temperature = team.cfg.sampling.temperature

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["worker"] = BatchWorker(team.batcher(limits.max_concurrency), batch_wait_s)
        yield
        await asyncio.to_thread(state["worker"].close)

    app = FastAPI(title=f"marft: {team.name}", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error(ApiError(exc.status_code, str(exc.detail), kind))

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise ApiError(
                401, "a valid API key is required (Authorization: Bearer KEY)", "authentication_error"
            )

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> JSONResponse:
        batcher = state["worker"].batcher
        return JSONResponse(
            {
                "status": "ok",
                "in_flight": len(batcher.live),
                "pending": batcher.pending,
                "calls": batcher.calls,
                "rows": batcher.rows,
                "failures": state["worker"].failures,
            }
        )

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        try:
            authorize(request)
        except ApiError as e:
            return _error(e)
        ids = [team.name, *(f"{team.name}/{r}" for r in team.graph.roles)]
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": i, "object": "model", "created": 0, "owned_by": "marft"} for i in ids],
            }
        )

    @app.get("/v1/team")
    async def info(request: Request) -> Response:
        try:
            authorize(request)
        except ApiError as e:
            return _error(e)
        return JSONResponse(team_info(team))

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        try:
            authorize(request)
            declared = int(request.headers.get("content-length") or 0)
            if declared > limits.max_body_bytes:
                raise ApiError(413, f"the request body is over {limits.max_body_bytes} bytes")
            raw = await request.body()
            req = parse_chat_request(raw, team.name, team.graph.roles, limits, temperature)
            worker = state["worker"]
            if worker.batcher.pending >= limits.max_concurrency + limits.max_queue:
                raise ApiError(
                    429, "the server is at its limit of tasks; try again shortly", "rate_limit_error"
                )
        except ApiError as e:
            return _error(e)
        events: asyncio.Queue[AgentMessage | TeamReply] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        task = worker.batcher.submit(
            team.observation(req.task),
            solo=req.role,
            max_tokens=req.max_tokens,
            on_message=lambda m: loop.call_soon_threadsafe(events.put_nowait, m),
            on_done=lambda r: loop.call_soon_threadsafe(events.put_nowait, r),
        )
        worker.notify()
        if req.stream:
            return StreamingResponse(_stream(req, task, events, worker), media_type="text/event-stream")
        return await _wait(request, req, task, events, worker)

    return app


async def _stream(
    req: ChatRequest, task: LiveTask, events: asyncio.Queue, worker: BatchWorker
) -> AsyncIterator[str]:
    """Server-sent events: one per agent message, then the reply; a client that leaves (the
    generator is closed) cancels the task."""
    id = new_id()
    first = True
    try:
        while True:
            item = await events.get()
            if isinstance(item, TeamReply):
                yield final_events(req, id, item, first)
                return
            yield message_event(req, id, item, first)
            first = False
    finally:
        if task.reply is None:
            worker.batcher.cancel(task)
            worker.notify()


async def _wait(
    request: Request, req: ChatRequest, task: LiveTask, events: asyncio.Queue, worker: BatchWorker
) -> Response:
    """The whole reply once the team is done; the task is cancelled if the client leaves first."""
    while True:
        try:
            item = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
        except TimeoutError:
            if await request.is_disconnected():
                worker.batcher.cancel(task)
                worker.notify()
                return Response(status_code=499)
            continue
        if isinstance(item, TeamReply):
            if item.finish_reason == "error":
                return _error(ApiError(500, f"generation failed: {task.error}", "server_error"))
            prompt = sum(m.prompt_tokens for m in item.messages)
            return JSONResponse(completion(req, item, new_id(), prompt))
