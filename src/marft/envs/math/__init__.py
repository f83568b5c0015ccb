"""Math reasoning: grading and the multi-turn math env."""

from marft.envs.math.grading import extract_answer, grade, normalize

__all__ = ["extract_answer", "grade", "normalize"]
