"""The OpenAI chat-completions wire format, without the web framework: a request checked into a
:class:`ChatRequest` (or an :class:`ApiError` with the status and the OpenAI-style error body),
and a :class:`~marft.rollout.live.TeamReply` shaped as a ``chat.completion`` or as
``chat.completion.chunk`` events.

marft's additions ride in an extra field, ``marft``, that OpenAI clients keep (``model_extra`` in
the ``openai`` package): the transcript (every agent's message, the route, tokens per agent) on a
reply, one agent's message on a streamed event.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from marft.rollout.live import AgentMessage, TeamReply


@dataclass
class ServeLimits:
    """What one server accepts (``marft serve`` flags).

    Attributes:
        max_body_bytes: the largest request body.
        max_input_chars: the longest task (the last user message).
        max_tokens: the largest ``max_tokens`` a request may ask for (a cap on each agent's action).
        max_concurrency: tasks in one batch at once.
        max_queue: tasks waiting for a place in the batch; beyond, requests get 429.
    """

    max_body_bytes: int = 65536
    max_input_chars: int = 8000
    max_tokens: int = 1024
    max_concurrency: int = 16
    max_queue: int = 64


class ApiError(Exception):
    """A request the server refuses: HTTP ``status`` and an OpenAI-style error body."""

    def __init__(
        self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type, "param": param, "code": None}}


@dataclass
class ChatRequest:
    """A checked chat-completions request.

    Attributes:
        model: the team's name, or ``TEAM/ROLE`` for one agent alone.
        role: that agent (None: the whole team).
        task: the last user message's text.
        stream: send server-sent events.
        max_tokens: a cap on each agent's action (None: each agent's own limit).
    """

    model: str
    role: str | None
    task: str
    stream: bool
    max_tokens: int | None


def _text(content: Any) -> str:
    """A message's text: a string, or the ``text`` parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        if any(p.get("type") != "text" or not isinstance(p.get("text"), str) for p in content):
            raise ApiError(400, "only text content parts are supported", param="messages")
        return "\n".join(p["text"] for p in content)
    raise ApiError(400, "a message's content must be a string or a list of text parts", param="messages")


def _check_number(body: dict, key: str, low: float, high: float) -> None:
    value = body.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ApiError(400, f"{key} must be a number from {low} to {high}", param=key)


def parse_chat_request(
    raw: bytes, team: str, roles: list[str], limits: ServeLimits, temperature: float
) -> ChatRequest:
    """Check a chat-completions request body.

    Args:
        raw: the body.
        team: the team's name (``model``).
        roles: its agents (``model: TEAM/ROLE``).
        limits: the server's limits.
        temperature: the temperature the team samples at (a request may not ask for another).

    Raises:
        ApiError: 400 for a malformed or unsupported request, 404 for an unknown model or role,
            413 for a body over ``max_body_bytes``.
    """
    if len(raw) > limits.max_body_bytes:
        raise ApiError(413, f"the request body is over {limits.max_body_bytes} bytes")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str):
        raise ApiError(400, "model is required: the team's name, or TEAM/ROLE", param="model")
    name, _, role = model.partition("/")
    if name != team or (role and role not in roles):
        choices = ", ".join([team, *(f"{team}/{r}" for r in roles)])
        raise ApiError(404, f"no model {model!r}; this server has {choices}", "not_found_error", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ApiError(400, "messages must be a non-empty list of messages", param="messages")
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        raise ApiError(400, "messages hold no user message: the task is the last one", param="messages")
    task = _text(users[-1].get("content"))
    if not task.strip():
        raise ApiError(400, "the task (the last user message) is empty", param="messages")
    if len(task) > limits.max_input_chars:
        raise ApiError(400, f"the task is over {limits.max_input_chars} characters", param="messages")
    if body.get("n", 1) != 1:
        raise ApiError(400, "n must be 1: one team reply per request", param="n")
    _check_number(body, "temperature", 0, 2)
    _check_number(body, "top_p", 0, 1)
    asked = body.get("temperature")
    if asked is not None and abs(asked - temperature) > 1e-9:
        raise ApiError(
            400,
            f"this team samples at temperature {temperature} (start the server with "
            "--set sampling.temperature=T for another); leave temperature out",
            param="temperature",
        )
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int)
        or not 1 <= max_tokens <= limits.max_tokens
    ):
        raise ApiError(
            400, f"max_tokens must be an integer from 1 to {limits.max_tokens}", param="max_tokens"
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", param="stream")
    return ChatRequest(model, role or None, task, stream, max_tokens)


def transcript(reply: TeamReply) -> dict[str, Any]:
    """The ``marft`` field of a reply: every message, the route, tokens per agent."""
    return {
        "messages": [asdict(m) for m in reply.messages],
        "route": reply.route,
        "answer_role": reply.answer_role,
        "tokens": reply.tokens,
    }


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def completion(request: ChatRequest, reply: TeamReply, id: str, prompt_tokens: int = 0) -> dict[str, Any]:
    """A ``chat.completion``: the graded agent's final message, and the transcript in ``marft``."""
    used = sum(reply.tokens.values())
    return {
        "id": id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.answer},
                "finish_reason": reply.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": used,
            "total_tokens": prompt_tokens + used,
        },
        "marft": transcript(reply),
    }


def chunk(request: ChatRequest, id: str, delta: dict, finish: str | None, extra: dict) -> str:
    """One server-sent event holding a ``chat.completion.chunk``."""
    data = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": request.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        "marft": extra,
    }
    return f"data: {json.dumps(data)}\n\n"


def message_event(request: ChatRequest, id: str, message: AgentMessage, first: bool) -> str:
    """An agent finished a message: an empty delta (the reply's text comes last), the message in
    ``marft``."""
    delta = {"role": "assistant"} if first else {}
    return chunk(request, id, delta, None, {"event": "message", **asdict(message)})


def final_events(request: ChatRequest, id: str, reply: TeamReply, first: bool) -> str:
    """The reply's text as the content delta with its finish reason, and the transcript."""
    delta: dict[str, str] = {"role": "assistant"} if first else {}
    delta["content"] = reply.answer
    return (
        chunk(request, id, delta, reply.finish_reason, {"event": "done", **transcript(reply)})
        + "data: [DONE]\n\n"
    )
