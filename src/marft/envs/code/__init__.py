"""Coding tasks: MBPP, HumanEval and generated easy functions (:mod:`.tasks`), extracting the
program from an answer (:mod:`.extract`), running it safely (:mod:`.sandbox`; its isolation
:mod:`.isolation`, the two processes inside it :mod:`.inside`, the trainer's side of a run
:mod:`.watch` and :mod:`.verdict`) and the env that puts them together (:mod:`.env`,
``env.name: code``)."""
