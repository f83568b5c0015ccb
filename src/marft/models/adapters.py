"""A frozen base with a named LoRA adapter per agent: which adapter an agent runs, its tensors, and
its weights as PEFT saves them.

Each agent is a PEFT LoRA adapter named after its role (or, with ``lora.shared``, every agent is
the one adapter ``shared``); the bare base with adapters disabled is the reference policy.
:class:`~marft.models.team_model.TeamModel` builds on this with a value head and the forwards.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import ModulesToSaveWrapper
from torch import Tensor, nn

from marft.config import LoraSettings

SHARED_ADAPTER = "shared"
"""The adapter's name when all agents share one (``lora.shared``)."""


def lora_config(lora: LoraSettings) -> LoraConfig:
    """The PEFT config of one agent's adapter."""
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        modules_to_save=list(lora.modules_to_save) or None,
        bias="none",
        task_type="CAUSAL_LM",
    )


class TeamAdapters(nn.Module):
    """A frozen base and one LoRA adapter per role (or one for all, ``lora.shared``).

    Everything that takes an agent (:meth:`adapter`, :meth:`adapter_parameters`, ...) also takes
    an adapter name: an agent's role maps to its adapter (:meth:`adapter_name`), an adapter name
    to itself. Weights are per adapter (:attr:`adapters`).

    Args:
        base: a Hugging Face causal LM, already frozen and on its device and dtype.
        roles: the agents, in acting order.
        lora: adapter settings of all agents (``lora.shared``: one adapter for all).

    Attributes:
        roles: the agents, in acting order.
        adapter_of: agent -> the name of the adapter it runs.
        adapters: the distinct adapter names, in acting order.
        policy: the PEFT model (base with every adapter injected).
    """

    def __init__(self, base: nn.Module, roles: Sequence[str], lora: LoraSettings) -> None:
        super().__init__()
        self.roles = list(roles)
        self.adapter_of = {r: SHARED_ADAPTER if lora.shared else r for r in self.roles}
        self.adapters = list(dict.fromkeys(self.adapter_of.values()))  # distinct, in acting order
        self.policy: PeftModel = get_peft_model(base, lora_config(lora), adapter_name=self.adapters[0])
        for name in self.adapters[1:]:
            self.policy.add_adapter(name, lora_config(lora))
        # PEFT keeps LoRA matrices in float32 when the base is half precision; do the same for the
        # full per-agent copies (modules_to_save), so every trainable tensor and its optimizer
        # state is float32.
        self._float32_saved_modules()

    def _float32_saved_modules(self) -> None:
        def cast_in(module, args):
            return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

        def cast_out(module, args, output):
            return output.to(module._marft_out_dtype)

        for wrapper in self.policy.modules():
            if not isinstance(wrapper, ModulesToSaveWrapper):
                continue
            for copy in wrapper.modules_to_save.values():
                params = list(copy.parameters())
                if not params or params[0].dtype == torch.float32:
                    continue
                copy._marft_out_dtype = params[0].dtype  # the base's dtype, for the layers after it
                copy.float()
                copy.register_forward_pre_hook(cast_in)
                copy.register_forward_hook(cast_out)

    # ------------------------------------------------------------------------------ parameters

    def adapter_name(self, name: str) -> str:
        """The adapter agent ``name`` runs with (an adapter name, or ``__base__``, as it is)."""
        return self.adapter_of.get(name, name)

    def of(self, name: str) -> TeamAdapters:
        """The model agent (or adapter) ``name`` runs on: this one (a team of several bases,
        :class:`~marft.models.bases.TeamBases`, gives that agent's base)."""
        return self

    @property
    def members(self) -> list[TeamAdapters]:
        """The models of the team's bases: this one."""
        return [self]

    def named_adapter_parameters(self, role: str) -> list[tuple[str, nn.Parameter]]:
        """The trainable tensors of one agent's adapter (its LoRA matrices and ``modules_to_save``
        copies), by parameter name.

        Matched exactly on PEFT's ``.<lora_*|modules_to_save>.<adapter>.`` segment, so an adapter
        named like a module (``model``, ``mlp``) cannot pick up another agent's tensors.
        """
        name = self.adapter_name(role)
        pattern = re.compile(rf"\.(lora_[A-Za-z_]+|modules_to_save)\.{re.escape(name)}(\.|$)")
        return [(n, p) for n, p in self.policy.named_parameters() if pattern.search(n)]

    def adapter_parameters(self, role: str) -> list[nn.Parameter]:
        """The trainable tensors of one agent (see :meth:`named_adapter_parameters`)."""
        return [p for _, p in self.named_adapter_parameters(role)]

    def base_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Every parameter of the frozen base (no adapter, no saved-module copy)."""
        for n, p in self.policy.named_parameters():
            if "lora_" not in n and "modules_to_save" not in n:
                yield n, p

    # ------------------------------------------------------------------------------ weights

    def adapter_weights(self, names: Sequence[str] | None = None) -> dict[str, dict[str, Tensor]]:
        """Adapters as PEFT saves them (``adapter_model.safetensors`` keys), by adapter name: what
        a generation engine that keeps its own copy of the adapters loads after an update.

        Args:
            names: adapters or agents (default: every adapter); agents sharing one give it once.
        """
        from peft.utils import get_peft_model_state_dict

        wanted = self.adapters if names is None else dict.fromkeys(self.adapter_name(n) for n in names)
        return {
            name: {
                k: v.detach() for k, v in get_peft_model_state_dict(self.policy, adapter_name=name).items()
            }
            for name in wanted
        }

    def set_adapter_weights(self, weights: Mapping[str, Mapping[str, Tensor]]) -> None:
        """Load adapters given as :meth:`adapter_weights` returns them (adapter -> PEFT tensors).

        Raises:
            ValueError: a name is not an adapter of this team, or its tensors do not fit.
        """
        from peft.utils import set_peft_model_state_dict

        for name, tensors in weights.items():
            if name not in self.adapters:
                raise ValueError(
                    f"no adapter {name!r} in this team (adapters: {', '.join(self.adapters)}; "
                    "is lora.shared the same as the run's?)"
                )
            result = set_peft_model_state_dict(self.policy, dict(tensors), adapter_name=name)
            if getattr(result, "unexpected_keys", None):
                raise ValueError(f"adapter {name!r} does not fit this model: {result.unexpected_keys[:3]}")

    def adapter_config(self, role: str) -> dict:
        """The PEFT ``adapter_config.json`` content of agent (or adapter) ``role``."""
        cfg = self.policy.peft_config[self.adapter_name(role)].to_dict()
        return {k: sorted(v) if isinstance(v, set) else v for k, v in cfg.items()}

    # ------------------------------------------------------------------------------ switching

    @contextmanager
    def adapter(self, role: str | None) -> Iterator[None]:
        """Run the policy as agent (or adapter) ``role``; ``None`` means the reference policy (the
        bare base)."""
        if role is None:
            with self.policy.disable_adapter():
                yield
            return
        self.policy.set_adapter(self.adapter_name(role))
        yield
