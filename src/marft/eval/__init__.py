"""Evaluation of a trained team: accuracy, pass@k and majority votes (``marft eval``), and the
judged comparison with the untrained team."""

from marft.eval.evaluate import Evaluator, ProblemResult, evaluate, format_table

__all__ = ["Evaluator", "ProblemResult", "evaluate", "format_table"]
