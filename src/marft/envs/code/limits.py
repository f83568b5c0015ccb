"""What one sandboxed program may use."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """What one program may use (``env.kwargs.sandbox`` of the code env)."""

    wall_seconds: float = 10.0
    """Killed after this long, whatever it is doing (sleeping included)."""
    cpu_seconds: int = 10
    """CPU time (all its threads); then killed by the kernel."""
    memory_mb: int = 1024
    """Address space of each of its processes."""
    processes: int = 16
    """Processes and threads it may have at once (a fork bomb stops here)."""
    open_files: int = 64
    """Open file descriptors per process."""
    file_size_mb: int = 16
    """Largest file it may write."""
    workdir_mb: int = 64
    """Size of its in-memory working folder (bubblewrap only)."""
    output_bytes: int = 1_000_000
    """Killed once stdout and stderr together pass this many bytes."""
    kept_chars: int = 2000
    """Characters of stdout and of stderr kept in the result."""

    def __post_init__(self) -> None:
        from marft.config import ConfigError

        for name in ("wall_seconds", "cpu_seconds", "memory_mb", "processes", "open_files", "output_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, "must be positive")
