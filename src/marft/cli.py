"""``marft`` command line: ``marft train``, ``marft eval``, ``marft report``, ``marft export``,
``marft plan``, ``marft run`` and ``marft serve``."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from marft.config import ConfigError, preset_names

TRAIN_HELP = """\
Train a team with the config CONFIG: a YAML file or a built-in preset name (default: demo, a
two-agent signalling team on the built-in tiny model that learns on CPU in about a minute).

The run directory (--out, default a new folder under runs/) receives config.yaml (the resolved
config), metrics.jsonl (one row per iteration), TensorBoard events, transcripts.jsonl and
checkpoints/iter-N/ (adapters, value head, optimizers, RNG and env state). Ctrl-C or SIGTERM saves a
checkpoint and stops; --resume RUN_DIR continues exactly.

Examples:
  marft train
  marft train my_team.yaml --set algorithm.policy_lr=1e-3 --set env.n_envs=32
  marft train --set team.agents.1.observes=[]     # the demo without its dependency: stays at chance
  marft train --resume runs/my-run --set run.iterations=200
"""


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=(
            "override a config value by dotted key, e.g. algorithm.policy_lr=1e-3 (repeatable; values are "
            "YAML)"
        ),
    )


def _command(sub, name: str, help: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name, help=help, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="marft", description="Multi-agent reinforcement fine-tuning of LLM teams."
    )
    sub = p.add_subparsers(dest="command", required=True)
    t = _command(sub, "train", "train a team", TRAIN_HELP)
    t.add_argument(
        "config",
        nargs="?",
        default="demo",
        help=f"YAML file or preset ({', '.join(preset_names())}); default: demo",
    )
    _add_overrides(t)
    t.add_argument("--out", type=Path, default=None, help="run directory (default: a new folder under runs/)")
    t.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="continue RUN_DIR exactly from its newest complete checkpoint (its config.yaml plus any --set; "
        "raise run.iterations to train longer)",
    )

    r = _command(
        sub,
        "report",
        "write a run (or several, overlaid) as one HTML page of plots and transcripts",
        REPORT_HELP,
    )
    r.add_argument(
        "runs", type=Path, nargs="+", metavar="RUN_DIR", help="run directories; several are overlaid"
    )
    r.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE.html",
        help="output file (default: RUN_DIR/report.html for one run, report-A-vs-B.html here for several)",
    )

    x = _command(sub, "export", "export one agent's adapter, or the base with it merged in", EXPORT_HELP)
    x.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory or one of its checkpoints")
    x.add_argument("--agent", required=True, metavar="ROLE", help="the agent (role) to export")
    x.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created)")
    x.add_argument(
        "--merge",
        action="store_true",
        help="merge the adapter into the base and write a standalone model folder "
        "(AutoModelForCausalLM.from_pretrained loads it)",
    )

    e = _command(sub, "eval", "evaluate a team on a problem set", EVAL_HELP)
    e.add_argument(
        "config",
        nargs="?",
        default=None,
        help="YAML file or preset (default: the checkpoint run's config.yaml)",
    )
    e.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="run directory (its newest checkpoint) or a checkpoints/iter-N folder (default: the base model)",
    )
    e.add_argument(
        "--split", default=None, help="a JSONL file of problems, or a dataset split name (hf: datasets)"
    )
    e.add_argument(
        "--samples", type=int, default=1, help="attempts per problem, K (pass@K, maj@K); default 1"
    )
    e.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems")
    e.add_argument("--batch", type=int, default=32, help="env copies run together (default 32)")
    e.add_argument("--no-ablation", action="store_true", help="skip the per-agent swap-to-base ablation")
    e.add_argument(
        "--greedy",
        action="store_true",
        help="decode greedily (sampling.top_k=1) instead of sampling with the run's temperature",
    )
    e.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: CHECKPOINT_RUN/eval or runs/eval-TIME)",
    )
    _add_overrides(e)
    _plan_parser(sub)
    from marft.serve.commands import add_parsers

    add_parsers(sub, _command)
    return p


PLAN_HELP = """\
Print the memory a config needs per process (the learner, and each rollout worker under run.ray),
item by item: the frozen base, the adapters with their optimizer states, the critic, the KV cache
and the activations of one micro-batch; and what MARFT's reference layout (a full base per agent
and one for the critic) needs for the same team. Shapes come from the model's config; no weights
are loaded. model.name=shape:qwen2.5-7b (or -0.5b, -1.5b) plans a model that is not on this machine.

Examples:
  marft plan smollm2_arith
  marft plan my_team.yaml --gpus 8 --gpu-memory 80
  marft plan demo --set model.name=shape:qwen2.5-7b --set model.dtype=bfloat16 --prompt-tokens 1024
"""


def _plan_parser(sub) -> None:
    pl = _command(sub, "plan", "memory per device for a config", PLAN_HELP)
    pl.add_argument("config", nargs="?", default="demo", help="YAML file or preset; default: demo")
    _add_overrides(pl)
    pl.add_argument("--gpus", type=int, default=None, help="GPUs to place the processes on")
    pl.add_argument("--gpu-memory", type=float, default=None, metavar="GB", help="memory of one GPU, GiB")
    pl.add_argument(
        "--prompt-tokens", type=int, default=None, help="longest prompt (default: measured on the env)"
    )


def _plan(args) -> int:
    from marft.compose import load_config
    from marft.plan import plan_text

    cfg = load_config(args.config, args.overrides)
    print(plan_text(cfg, args.gpus, args.gpu_memory, args.prompt_tokens))
    return 0


EVAL_HELP = """\
Evaluate a team on a problem set: accuracy, pass@K and majority vote (maj@K) over K samples per
problem, and, with a checkpoint, an ablation that swaps one agent at a time back to the base model
and shows the accuracy drop per agent. Writes summary.json and transcripts.jsonl to --out and
prints the same numbers as a table.

Examples:
  marft eval --checkpoint runs/my-run --split test --samples 4     # the hub dataset's test split
  marft eval --checkpoint runs/my-run --split path/to/test.jsonl --samples 4
  marft eval math_dual --split test.jsonl --limit 100 --set model.name=PATH    # the base model
"""


REPORT_HELP = """\
Write one self-contained HTML file (no network needed to view it): the team's return, per agent the
policy loss, approximate KL and entropy, the value loss, time per phase, the resolved config, and
the episode transcripts with each agent's turn under its role, best and worst episodes first.
Several runs are drawn on the same axes. marft train writes RUN_DIR/report.html at the end of a run.

Examples:
  marft report runs/my-run
  marft report runs/appo runs/grpo --out appo-vs-grpo.html
"""

EXPORT_HELP = """\
Export one agent of a trained team: its PEFT adapter folder alone (PeftModel.from_pretrained loads
it on the base model), or with --merge the base model with that adapter merged in, saved with its
tokenizer as a standalone folder for AutoModelForCausalLM.from_pretrained (or vLLM, or the hub).

Examples:
  marft export runs/my-run --agent actor --out exported/actor
  marft export runs/my-run --agent actor --out exported/actor-merged --merge
"""


def _train(args) -> int:
    from marft.compose import load_config
    from marft.trainer import train
    from marft.trainer.trainer import TrainingStopped

    if args.resume is not None:
        if args.config != "demo" or args.out is not None:
            raise ConfigError(
                "--resume", "takes the run's own config.yaml and folder; give only --set overrides"
            )
        source = args.resume / "config.yaml"
        if not source.exists():
            from marft.trainer.checkpoint import CheckpointError

            raise CheckpointError(
                f"{args.resume} is not a marft run directory (no config.yaml); give the --out folder of a "
                "marft train run"
            )
        cfg = load_config(str(source), args.overrides)
        run_dir = args.resume
    else:
        cfg = load_config(args.config, args.overrides)
        run_dir = args.out
    try:
        result = train(cfg, run_dir, resume=args.resume is not None)
    except TrainingStopped as e:
        print(f"marft: {e}", file=sys.stderr)
        return e.exit_code
    last = [r["episode_return"] for r in result.rows[-5:] if r["episode_return"] is not None]
    mean = sum(last) / len(last) if last else float("nan")
    print(f"run directory: {result.run_dir}")
    print(f"mean episode_return over the last {len(last)} iterations: {mean:.3f}")
    print(f"checkpoint: {result.checkpoint}")
    if result.report is not None:
        print(f"report: {result.report}")
    return 0


def _report(args) -> int:
    from marft.reporting.report import write_report

    missing = [str(p) for p in args.runs if not (p / "metrics.jsonl").exists()]
    if missing:
        raise ConfigError(
            "RUN_DIR", f"{', '.join(missing)}: no metrics.jsonl; give --out folders of marft train runs"
        )
    out = write_report(args.runs, args.out)
    print(f"report: {out}")
    return 0


def _export(args) -> int:
    from marft.export import export_agent

    out = export_agent(args.run_dir, args.agent, args.out, merge=args.merge)
    kind = "merged model" if args.merge else "adapter"
    print(f"exported {args.agent}'s {kind} to {out}")
    return 0


def _eval(args) -> int:
    from datetime import datetime

    from marft.compose import load_config
    from marft.eval.evaluate import evaluate, format_table

    source = args.config
    from marft.trainer.checkpoint import run_dir_of

    run_dir = run_dir_of(args.checkpoint) if args.checkpoint is not None else None
    run_config = run_dir / "config.yaml" if run_dir else None
    if source is None:
        if run_config is None or not run_config.exists():
            raise ConfigError("", "give a CONFIG, or a --checkpoint run directory that holds config.yaml")
        source = str(run_config)
    overrides = list(args.overrides)
    if args.split:
        if args.split.endswith((".jsonl", ".json")) or Path(args.split).exists():
            overrides.append(f"env.kwargs.data={args.split}")
        else:
            overrides.append(f"env.kwargs.split={args.split}")
    if args.greedy:
        overrides.append("sampling.top_k=1")
    if args.samples < 1:
        raise ConfigError("--samples", "must be >= 1")
    cfg = load_config(source, overrides)
    out = args.out
    if out is None:
        base = run_dir if run_config is not None and run_config.exists() else Path("runs")
        out = base / f"eval-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    summary = evaluate(
        cfg, out, args.checkpoint, args.samples, args.limit, not args.no_ablation, args.batch, progress=True
    )
    print(format_table(summary))
    print(f"summary: {out / 'summary.json'}")
    return 0


def _fail(message: str) -> int:
    print(f"marft: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    # OpenMP's wait policy is left to OpenMP (or the user): the trainer adapts torch's thread count
    # to other processes instead (marft.runtime.ThreadGovernor, issue 32).
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    late_text = len(extra) == 1 and (extra[0] == "-" or not extra[0].startswith("-"))
    if extra and args.command == "run" and args.text is None and late_text:
        args.text = extra[0]  # `marft run SOURCE --base TEXT`: argparse takes positionals in one run
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # PEFT calls a transformers property deprecated in v5; the warning is not the user's to act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    from marft.models.loading import ModelLoadError
    from marft.reporting.trackers import TrackerError
    from marft.serve.commands import run_command, serve_command
    from marft.trainer.checkpoint import CheckpointError

    commands = {
        "train": _train,
        "eval": _eval,
        "export": _export,
        "report": _report,
        "plan": _plan,
        "run": run_command,
        "serve": serve_command,
    }
    try:
        return commands[args.command](args)
    except ConfigError as e:
        return _fail(f"config: {e}")
    except (ModelLoadError, CheckpointError, TrackerError) as e:
        return _fail(str(e))


if __name__ == "__main__":
    sys.exit(main())
