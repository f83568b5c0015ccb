"""Coding tasks: MBPP, HumanEval and generated easy functions (:mod:`.tasks`), extracting the
program from an answer (:mod:`.extract`), running it safely (:mod:`.sandbox`, :mod:`.isolation`)
and the env that puts them together (:mod:`.env`, ``env.name: code``)."""
