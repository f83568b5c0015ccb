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
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value by dotted key, e.g. algorithm.policy_lr=1e-3 (repeatable; values are YAML)",
    )
    t.add_argument("--out", type=Path, default=None, help="run directory (default: a new folder under runs/)")
    return p


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
    except ConfigError as e:
        return _fail(f"config: {e}")
    except ModelLoadError as e:
        return _fail(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
