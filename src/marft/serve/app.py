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
from typing import Any, cast

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


class TeamServer:
    """The endpoints' work: a team, the server's limits and key, and the batch worker (started
    and stopped by the app's lifespan).

    Args:
        team: the team served.
        limits: what requests may ask for.
        api_key: required as ``Authorization: Bearer KEY`` on ``/v1/*`` (None: no key).
        batch_wait_s: the batch worker's wait after an idle spell.
    """

    def __init__(
        self, team: ServedTeam, limits: ServeLimits, api_key: str | None, batch_wait_s: float
    ) -> None:
        self.team = team
        self.limits = limits
        self.api_key = api_key
        self.batch_wait_s = batch_wait_s
        self.page = resources.files("marft.serve").joinpath("page.html").read_text()
        self.worker: BatchWorker | None = None

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        self.worker = BatchWorker(self.team.batcher(self.limits.max_concurrency), self.batch_wait_s)
        yield
        await asyncio.to_thread(self.worker.close)

    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            message = "a valid API key is required (Authorization: Bearer KEY)"
            raise ApiError(401, message, "authentication_error")

    async def index(self) -> HTMLResponse:
        return HTMLResponse(self.page)

    async def health(self) -> JSONResponse:
        worker = cast(BatchWorker, self.worker)
        batcher = worker.batcher
        return JSONResponse(
            {
                "status": "ok",
                "in_flight": len(batcher.live),
                "pending": batcher.pending,
                "calls": batcher.calls,
                "rows": batcher.rows,
                "failures": worker.failures,
            }
        )

    async def models(self, request: Request) -> Response:
        try:
            self.authorize(request)
        except ApiError as e:
            return _error(e)
        name = self.team.name
        ids = [name, *(f"{name}/{r}" for r in self.team.graph.roles)]
        data = [{"id": i, "object": "model", "created": 0, "owned_by": "marft"} for i in ids]
        return JSONResponse({"object": "list", "data": data})

    async def info(self, request: Request) -> Response:
        try:
            self.authorize(request)
        except ApiError as e:
            return _error(e)
        return JSONResponse(team_info(self.team))

    async def _checked(self, request: Request) -> ChatRequest:
        """The request, authorized, parsed and within the limits (else :class:`ApiError`)."""
        self.authorize(request)
        limits = self.limits
        if int(request.headers.get("content-length") or 0) > limits.max_body_bytes:
            raise ApiError(413, f"the request body is over {limits.max_body_bytes} bytes")
        raw = await request.body()
        team = self.team
        req = parse_chat_request(raw, team.name, team.graph.roles, limits, team.cfg.sampling.temperature)
        if cast(BatchWorker, self.worker).batcher.pending >= limits.max_concurrency + limits.max_queue:
            message = "the server is at its limit of tasks; try again shortly"
            raise ApiError(429, message, "rate_limit_error")
        return req

    async def chat(self, request: Request) -> Response:
        try:
            req = await self._checked(request)
        except ApiError as e:
            return _error(e)
        worker = cast(BatchWorker, self.worker)
        events: asyncio.Queue[AgentMessage | TeamReply] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        task = worker.batcher.submit(
            self.team.observation(req.task),
            solo=req.role,
            max_tokens=req.max_tokens,
            on_message=lambda m: loop.call_soon_threadsafe(events.put_nowait, m),
            on_done=lambda r: loop.call_soon_threadsafe(events.put_nowait, r),
        )
        worker.notify()
        if req.stream:
            return StreamingResponse(_stream(req, task, events, worker), media_type="text/event-stream")
        return await _wait(request, req, task, events, worker)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (404, 405) in the OpenAI error format."""
    status = cast(StarletteHTTPException, exc).status_code
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    return _error(ApiError(status, str(cast(StarletteHTTPException, exc).detail), kind))


def create_app(
    team: ServedTeam,
    limits: ServeLimits | None = None,
    api_key: str | None = None,
    batch_wait_s: float = 0.005,
) -> FastAPI:
    """The server's app. Its batch worker starts with the app's lifespan and, on shutdown, finishes
    the tasks in flight before it stops."""
    server = TeamServer(team, limits or ServeLimits(), api_key, batch_wait_s)
    app = FastAPI(title=f"marft: {team.name}", lifespan=server.lifespan, docs_url=None, redoc_url=None)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_api_route("/", server.index, methods=["GET"], response_class=HTMLResponse)
    app.add_api_route("/health", server.health, methods=["GET"])
    app.add_api_route("/v1/models", server.models, methods=["GET"])
    app.add_api_route("/v1/team", server.info, methods=["GET"])
    app.add_api_route("/v1/chat/completions", server.chat, methods=["POST"])
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
