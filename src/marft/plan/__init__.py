"""``marft plan``: memory per device for a config, in marft's layout and in MARFT's reference layout.

:mod:`marft.plan.memory` counts the bytes of each process (shapes, then each part);
:mod:`marft.plan.report` prints them (``marft plan``), per base for a team of several bases.
"""

from marft.plan.memory import (
    ADAM_BYTES,
    GIB,
    SHAPES,
    DevicePlan,
    ModelShape,
    first_env,
    measure_prompt_tokens,
    model_shape,
    plan,
    tiny_corpus_of,
)
from marft.plan.report import base_config, format_plan, per_gpu, plan_text, team_learner

__all__ = [
    "ADAM_BYTES",
    "GIB",
    "SHAPES",
    "DevicePlan",
    "ModelShape",
    "base_config",
    "first_env",
    "format_plan",
    "measure_prompt_tokens",
    "model_shape",
    "per_gpu",
    "plan",
    "plan_text",
    "team_learner",
    "tiny_corpus_of",
]
