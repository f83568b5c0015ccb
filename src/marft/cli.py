"""``marft`` command line: ``marft train [CONFIG] [--set key=value ...] [--out DIR]``."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from marft.config import ConfigError, load_config, preset_names

TRAIN_HELP = """\
Train a team with the config CONFIG: a YAML file or a built-in preset name (default: demo, a
two-agent signalling team on the built-in tiny model that learns on CPU in about a minute).

The run directory (--out, default a new folder under runs/) receives config.yaml (the resolved
config), metrics.jsonl (one row per iteration), TensorBoard events, transcripts.jsonl and a final
checkpoint/ with one PEFT adapter folder per agent, the value head and the optimizer states.

Examples:
  marft train
  marft train my_team.yaml --set algorithm.policy_lr=1e-3 --set env.n_envs=32
  marft train --set team.agents.1.observes=[]     # the demo without its dependency: stays at chance
"""


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value by dotted key, e.g. algorithm.policy_lr=1e-3 (repeatable; values are YAML)",
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="marft", description="Multi-agent reinforcement fine-tuning of LLM teams."
    )
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser(
        "train",
        help="train a team",
        description=TRAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument(
        "config",
        nargs="?",
        default="demo",
        help=f"YAML file or preset ({', '.join(preset_names())}); default: demo",
    )
    _add_overrides(t)
    t.add_argument("--out", type=Path, default=None, help="run directory (default: a new folder under runs/)")

    e = sub.add_parser(
        "eval",
        help="evaluate a team on a problem set",
        description=EVAL_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
        help="run directory or its checkpoint/ (default: the base model)",
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
        "--out",
        type=Path,
        default=None,
        help="output folder (default: CHECKPOINT_RUN/eval or runs/eval-TIME)",
    )
    _add_overrides(e)
    return p


EVAL_HELP = """\
Evaluate a team on a problem set: accuracy, pass@K and majority vote (maj@K) over K samples per
problem, and, with a checkpoint, an ablation that swaps one agent at a time back to the base model
and shows the accuracy drop per agent. Writes summary.json and transcripts.jsonl to --out and
prints the same numbers as a table.

Examples:
  marft eval --checkpoint runs/my-run --split ../shared/data/gsm8k/test.jsonl --samples 4
  marft eval math_dual --split test.jsonl --limit 100 --set model.name=PATH    # the base model
"""


def _eval(args) -> int:
    from datetime import datetime

    from marft.trainer.evaluate import evaluate, format_table

    source = args.config
    run_config = args.checkpoint / "config.yaml" if args.checkpoint else None
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
    if args.samples < 1:
        raise ConfigError("--samples", "must be >= 1")
    cfg = load_config(source, overrides)
    out = args.out
    if out is None:
        base = (
            args.checkpoint
            if args.checkpoint and (args.checkpoint / "config.yaml").exists()
            else Path("runs")
        )
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
    args = _parser().parse_args(argv)
    # PEFT calls a transformers property deprecated in v5; the warning is not the user's to act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    from marft.models.team_model import ModelLoadError

    try:
        if args.command == "train":
            cfg = load_config(args.config, args.overrides)
            from marft.trainer import train

            result = train(cfg, args.out)
            last = [r["episode_return"] for r in result.rows[-5:] if r["episode_return"] is not None]
            mean = sum(last) / len(last) if last else float("nan")
            print(f"run directory: {result.run_dir}")
            print(f"mean episode_return over the last {len(last)} iterations: {mean:.3f}")
            print(f"checkpoint: {result.checkpoint}")
        elif args.command == "eval":
            return _eval(args)
    except ConfigError as e:
        return _fail(f"config: {e}")
    except ModelLoadError as e:
        return _fail(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
