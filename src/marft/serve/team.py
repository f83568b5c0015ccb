"""A team ready to act on new tasks: its config, one base with the trained adapters, a generation
backend and one env copy that renders tasks, loaded from a run folder, a checkpoint, or a config
with ``base=True`` (the untrained team)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

from marft.compose import build_envs, build_generators, build_team_model, load_config, resolve
from marft.config import Config, ConfigError, preset_names
from marft.envs.base import Env, Observation
from marft.envs.capabilities import TaskEnv
from marft.models.bases import TeamBases
from marft.models.row_adapters import BASE
from marft.models.team_model import TeamModel
from marft.rollout.backends import GenerationBackend
from marft.rollout.generators import Generators
from marft.rollout.live import LiveBatcher
from marft.runtime import ThreadGovernor
from marft.team.graph import TeamGraph
from marft.trainer.checkpoint import CheckpointError, load_adapter_weights, resolve_checkpoint, run_dir_of


@dataclass
class ServedTeam:
    """Everything a live team needs.

    Attributes:
        name: what clients call it (``model`` in the OpenAI API): the run folder's name, or the
            config's for an untrained team.
        cfg: the run's config.
        graph: the team.
        model: the shared base with every agent's adapter (several bases: each with its agents').
        generators: each base's tokenizer and generation backend.
        env: one env copy, which renders tasks (:class:`~marft.envs.capabilities.TaskEnv`).
        renders_tasks: whether the env renders tasks itself (else the text is the observation).
        checkpoint: the checkpoint the adapters came from (None: the untrained team).
    """

    name: str
    cfg: Config
    graph: TeamGraph
    model: TeamModel | TeamBases
    generators: Generators
    env: Env
    renders_tasks: bool
    checkpoint: Path | None

    def observation(self, task: str) -> Observation:
        """What the team sees for ``task``."""
        if self.renders_tasks:
            return cast(TaskEnv, self.env).task_observation(task)
        return Observation(text=task)

    @property
    def backend(self) -> GenerationBackend:
        """The first base's generation backend (the only one of a team of one base)."""
        return self.generators.per_base[self.generators.bases[0]].backend

    def batcher(self, max_tasks: int = 16, seed: int | None = None) -> LiveBatcher:
        """A :class:`LiveBatcher` over this team (``max_tasks`` in flight at once)."""
        adapter_of = dict.fromkeys(self.graph.roles, BASE) if self.checkpoint is None else None
        return LiveBatcher(
            self.graph,
            self.model.members[0].tokenizer,
            self.backend,
            self.cfg.sampling.max_new_tokens,
            adapter_of=adapter_of,
            max_tasks=max_tasks,
            eos_ids={r: tuple(self.model.of(r).eos_ids) for r in self.graph.roles},
            seed=self.cfg.run.seed if seed is None else seed,
            generators=self.generators,
        )


def load_team(source: str | Path, base: bool = False, overrides: list[str] | None = None) -> ServedTeam:
    """Load a team to use.

    Args:
        source: a run folder (its newest checkpoint), a ``checkpoints/iter-N`` folder, or, with
            ``base``, a preset name or YAML file.
        base: run the untrained team (every agent on the bare base model).
        overrides: ``dotted.key=value`` config overrides (``sampling.temperature=0``, say).

    Raises:
        CheckpointError: a run folder without a complete checkpoint (and not ``base``).
        ConfigError: a config (not a run) without ``base``, or a bad override.
    """
    path = Path(source)
    run_dir = run_dir_of(path) if path.exists() else None
    if run_dir is not None and (run_dir / "config.yaml").exists():
        config_source: str = str(run_dir / "config.yaml")
        checkpoint = None if base else resolve_checkpoint(path)
        name = run_dir.resolve().name
    elif not path.exists() and str(source) not in preset_names():
        raise CheckpointError(f"{path} does not exist; give a run folder (the --out of marft train)")
    elif base:
        config_source, checkpoint, name = str(source), None, Path(str(source)).stem
    elif path.exists() and path.is_dir():
        raise CheckpointError(
            f"{path} is not a marft run folder (no config.yaml); give the --out folder of marft train"
        )
    else:
        raise ConfigError(
            "RUN_DIR",
            f"{source!r} is not a run folder; a config has no trained agents: add --base to run it untrained",
        )
    cfg = load_config(config_source, list(overrides or []))
    resolved = resolve(cfg)
    ThreadGovernor.for_run(cfg.run.torch_threads)
    envs = build_envs(resolved, 1)
    model = build_team_model(resolved, envs[0], with_critic=False)
    if checkpoint is not None:
        load_adapter_weights(model, checkpoint)
    return ServedTeam(
        name=name,
        cfg=cfg,
        graph=resolved.graph,
        model=model,
        generators=build_generators(resolved, model, envs[0]),
        env=envs[0],
        renders_tasks=resolved.env.tasks,
        checkpoint=checkpoint,
    )
