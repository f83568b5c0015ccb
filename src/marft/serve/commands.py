"""``marft run`` and ``marft serve``: their arguments and what they do."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from dataclasses import asdict

from marft.config import ConfigError

RUN_HELP = """\
Run a trained team on one task: every agent's message is printed as it is produced, labelled by
role, then the graded agent's final answer. SOURCE is a run folder (its newest checkpoint) or a
checkpoints/iter-N folder; with --base, also a preset or YAML file (the untrained team).

Examples:
  marft run runs/my-run "What is 17 * 23?"
  marft run runs/my-run --file task.txt --json
  echo "secret red" | marft run runs/demo -
  marft run runs/my-run "What is 17 * 23?" --base      # the same team, untrained
"""

SERVE_HELP = """\
Serve a trained team as an OpenAI-compatible endpoint (POST /v1/chat/completions, GET /v1/models)
with a web page at /. Requests in flight together are batched like training: every ready agent of
every request in one mixed-adapter generation. Needs the serve extra: pip install 'marft[serve]'.

Examples:
  marft serve runs/my-run
  marft serve runs/my-run --port 9000 --max-concurrency 32
  MARFT_API_KEY=secret marft serve runs/my-run --host 0.0.0.0
"""


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="run folder or checkpoint folder (with --base: also a preset or YAML)")
    p.add_argument(
        "--base", action="store_true", help="the untrained team: every agent on the bare base model"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. sampling.temperature=0.3 (repeatable)",
    )


def add_parsers(sub, command) -> None:
    """Add ``run`` and ``serve`` to the ``marft`` subcommands (``command`` makes a subparser)."""
    r = command(sub, "run", "run a team on one task", RUN_HELP)
    _source_args(r)
    r.add_argument("text", nargs="?", default=None, help="the task ('-': read it from standard input)")
    r.add_argument("--file", default=None, help="read the task from this file")
    r.add_argument("--json", action="store_true", help="print the whole transcript as JSON, nothing else")
    r.add_argument("--seed", type=int, default=None, help="seed torch's sampling (default: fresh draws)")
    s = command(sub, "serve", "serve a team over HTTP (OpenAI-compatible, with a web page)", SERVE_HELP)
    _source_args(s)
    s.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--api-key",
        default=os.environ.get("MARFT_API_KEY"),
        help="required as 'Authorization: Bearer KEY' (default: $MARFT_API_KEY); needed off loopback",
    )
    s.add_argument("--max-concurrency", type=int, default=16, help="tasks in one batch at once (default 16)")
    s.add_argument("--max-queue", type=int, default=64, help="tasks waiting beyond those; more get 429")
    s.add_argument("--max-input-chars", type=int, default=8000, help="longest task, characters")
    s.add_argument("--max-body-bytes", type=int, default=65536, help="largest request body, bytes")
    s.add_argument("--max-tokens", type=int, default=None, help="largest max_tokens a request may ask for")
    s.add_argument(
        "--batch-wait-ms", type=float, default=5.0, help="an idle server's wait for more requests (default 5)"
    )


def _task_text(args) -> str:
    if args.file is not None:
        if args.text is not None:
            raise ConfigError("--file", "give the task as TEXT or as --file, not both")
        with open(args.file, encoding="utf-8") as f:
            return f.read()
    if args.text == "-":
        return sys.stdin.read()
    if args.text is None:
        raise ConfigError("TEXT", "give the task: marft run SOURCE 'TEXT', --file F, or - for standard input")
    return args.text


def run_command(args) -> int:
    import torch

    from marft.serve.team import load_team

    text = _task_text(args)
    if not text.strip():
        raise ConfigError("TEXT", "the task is empty")
    team = load_team(args.source, base=args.base, overrides=args.overrides)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    batcher = team.batcher(max_tasks=1, seed=args.seed)

    def show(m) -> None:
        if not args.json:
            cut = " [cut at its limit]" if m.cut else ""
            print(f"[{m.role}] {m.text}{cut}", flush=True)

    (reply,) = batcher.run([team.observation(text)], on_message=show)
    if args.json:
        out = {"task": text, "team": team.name, "trained": team.checkpoint is not None, **asdict(reply)}
        print(json.dumps(out, indent=2))
    else:
        print(f"\nanswer ({reply.answer_role}): {reply.answer}")
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_command(args) -> int:
    if not _loopback(args.host) and not args.api_key:
        raise ConfigError(
            "--host",
            f"{args.host} is reachable from other machines: give --api-key KEY (or set MARFT_API_KEY)",
        )
    for flag in ("max_concurrency", "max_queue", "max_input_chars", "max_body_bytes"):
        if getattr(args, flag) < (0 if flag == "max_queue" else 1):
            raise ConfigError("--" + flag.replace("_", "-"), "must be >= 1 (--max-queue: >= 0)")
    try:
        import uvicorn

        from marft.serve.app import create_app
    except ImportError as e:
        raise ConfigError(
            "serve", f"the serve extra is not installed ({e}): pip install 'marft[serve]'"
        ) from None
    from marft.serve.openai_api import ServeLimits
    from marft.serve.team import load_team

    team = load_team(args.source, base=args.base, overrides=args.overrides)
    longest = max([a.max_new_tokens or team.cfg.sampling.max_new_tokens for a in team.graph.agents])
    limits = ServeLimits(
        max_body_bytes=args.max_body_bytes,
        max_input_chars=args.max_input_chars,
        max_tokens=args.max_tokens or longest,
        max_concurrency=args.max_concurrency,
        max_queue=args.max_queue,
    )
    app = create_app(team, limits, args.api_key, args.batch_wait_ms / 1000)
    url = f"http://{args.host}:{args.port}"
    print(f"marft serve: {team.name} at {url}/ (OpenAI base_url: {url}/v1)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=60)
    return 0
