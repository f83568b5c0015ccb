"""Beyond one process: rollout workers on Ray, and the memory planner (``marft plan``)."""
