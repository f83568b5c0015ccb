"""The grading worker process: ``python -m marft.envs.math.grader_worker``.

:func:`marft.envs.math.grading.grade` runs math-verify here, in a process of its own that it can
kill when sympy hangs in C code. It is started as a module, never through multiprocessing's
``spawn``, so it never imports the caller's ``__main__`` (a user script without an
``if __name__ == "__main__":`` guard would otherwise run a second time inside the worker).

Protocol, one line per message on the pipes: the parent writes ``[prediction, reference]`` as JSON;
the worker answers ``1`` (equivalent), ``0`` (not equivalent) or ``E`` (math-verify failed: no
verdict). The worker exits when its input closes or its parent is gone.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

ORPHAN_CHECK_S = 1.0
"""How often the worker checks that the process that started it is still alive."""


def verify(pred: str, ref: str) -> bool:
    """math-verify's verdict on two extracted answers (each parsed as the content of a box)."""
    from math_verify import parse
    from math_verify import verify as mv_verify

    gold = parse("\\boxed{" + ref + "}", parsing_timeout=None, raise_on_error=False)
    target = parse("\\boxed{" + pred + "}", parsing_timeout=None, raise_on_error=False)
    if not gold or not target:
        return False
    return bool(mv_verify(gold, target, timeout_seconds=None, raise_on_error=False))


def _exit_when_orphaned(parent: int) -> None:
    # A parent killed with SIGKILL closes our input, but a worker busy in sympy would not notice.
    while True:
        time.sleep(ORPHAN_CHECK_S)
        if os.getppid() != parent:
            os._exit(0)


def main() -> None:
    import logging
    import warnings

    # The protocol owns the original stdout; anything a library prints goes to stderr instead.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    warnings.filterwarnings("ignore")
    logging.disable(logging.CRITICAL)
    sys.setrecursionlimit(3000)
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    for line in sys.stdin:
        try:
            pred, ref = json.loads(line)
            answer = "1" if verify(str(pred), str(ref)) else "0"
        except BaseException:  # noqa: BLE001 (RecursionError, sympy internals: answer, never crash)
            answer = "E"
        answers.write(answer + "\n")


if __name__ == "__main__":
    main()
