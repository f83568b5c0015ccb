"""Using a trained team: ``marft run`` (one task in the terminal) and ``marft serve`` (an
OpenAI-compatible HTTP endpoint with a web page), both on :class:`~marft.rollout.live.LiveBatcher`.
The HTTP part needs the ``serve`` extra (FastAPI, uvicorn) and is imported only by ``marft serve``.
"""

from marft.serve.team import ServedTeam, load_team

__all__ = ["ServedTeam", "load_team"]
