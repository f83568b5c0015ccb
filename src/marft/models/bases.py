"""A team of several base models: each base is a :class:`~marft.models.team_model.TeamModel`
holding the adapters of the agents on it (``models`` and ``team.agents[i].base`` in the config).

:class:`TeamBases` answers what the trainer, the scoring phase and the learner ask of the whole
team (its roles and adapters, each adapter's weights and parameters) and gives each agent's own
base with :meth:`TeamBases.of`; everything that runs a forward asks ``model.of(role)`` first,
which a one-base :class:`TeamModel` answers with itself. Agents on one base share it, so a base is
in memory once, however many agents sit on it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import chain

import torch
from torch import Tensor, nn

from marft.models.team_model import TeamModel


class TeamBases:
    """Several bases, each with its agents' adapters.

    Args:
        models: base name -> its team model (the agents on it, in acting order).
        roles: every agent, in acting order.

    Attributes:
        models: as given.
        base_of: agent -> the name of its base.
        roles: every agent, in acting order.
        adapter_of: agent -> the name of the adapter it runs.
        adapters: every adapter (one per agent: adapters are not shared across bases).
        critic_base: the base whose value head is the critic (None: no critic).
    """

    def __init__(
        self, models: Mapping[str, TeamModel], roles: Sequence[str], critic_base: str | None = None
    ) -> None:
        self.models = dict(models)
        if critic_base is not None and self.models[critic_base].value_head is None:
            raise ValueError(f"the critic's base {critic_base!r} has no value head")
        self.critic_base = critic_base
        self.base_of = {r: name for name, m in self.models.items() for r in m.roles}
        missing = [r for r in roles if r not in self.base_of]
        if missing:
            raise ValueError(f"agents on no base: {missing}")
        self.roles = list(roles)
        self._adapter_base = {a: name for name, m in self.models.items() for a in m.adapters}
        self.adapter_of = {r: self.of(r).adapter_name(r) for r in self.roles}
        self.adapters = list(dict.fromkeys(self.adapter_of.values()))

    def of(self, name: str) -> TeamModel:
        """The base model agent (or adapter) ``name`` runs on."""
        base = self.base_of.get(name) or self._adapter_base.get(name)
        if base is None:
            raise KeyError(f"no agent or adapter {name!r} in this team; agents: {', '.join(self.roles)}")
        return self.models[base]

    @property
    def members(self) -> list[TeamModel]:
        """The bases' models, in the order of ``models``."""
        return list(self.models.values())

    @property
    def critic_model(self) -> TeamModel:
        """The base the critic reads (the first without a critic): its bare forward gives the
        critic's features, its tokenizer renders what the critic reads."""
        return self.models[self.critic_base] if self.critic_base is not None else self.members[0]

    @property
    def value_head(self) -> nn.Module | None:
        """The critic's value head (on :attr:`critic_model`), or None."""
        return self.critic_model.value_head if self.critic_base is not None else None

    @property
    def hidden_size(self) -> int:
        """Width of the critic's features (the critic base's final hidden state)."""
        return self.critic_model.hidden_size

    @property
    def device(self) -> torch.device:
        """The first base's device."""
        return self.members[0].device

    def adapter_name(self, name: str) -> str:
        return self.of(name).adapter_name(name)

    def named_adapter_parameters(self, role: str) -> list[tuple[str, nn.Parameter]]:
        return self.of(role).named_adapter_parameters(role)

    def adapter_parameters(self, role: str) -> list[nn.Parameter]:
        return self.of(role).adapter_parameters(role)

    def base_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Every base's frozen parameters, base after base."""
        return chain.from_iterable(m.base_parameters() for m in self.members)

    def adapter_weights(self, names: Sequence[str] | None = None) -> dict[str, dict[str, Tensor]]:
        """Adapters as PEFT saves them, by adapter name (each from its own base)."""
        wanted = self.adapters if names is None else list(dict.fromkeys(self.adapter_name(n) for n in names))
        out: dict[str, dict[str, Tensor]] = {}
        for name in wanted:
            out.update(self.of(name).adapter_weights([name]))
        return out

    def set_adapter_weights(self, weights: Mapping[str, Mapping[str, Tensor]]) -> None:
        """Load adapters by name, each into its own base.

        Raises:
            ValueError: a name is not an adapter of this team, or its tensors do not fit.
        """
        for name, tensors in weights.items():
            if name not in self._adapter_base:
                raise ValueError(f"no adapter {name!r} in this team (adapters: {', '.join(self.adapters)})")
            self.of(name).set_adapter_weights({name: tensors})

    @contextmanager
    def adapter(self, role: str) -> Iterator[None]:
        """Run agent (or adapter) ``role``'s base as that agent."""
        with self.of(role).adapter(role):
            yield
