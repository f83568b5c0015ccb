"""Coding tasks (MBPP, HumanEval): extracting the program from an answer (:mod:`.extract`)."""
