"""Wall time per phase of a run: what a researcher waits for, phase by phase.

The script wrapper times the whole process; pipelines time their phases
(imports, model load, SAE load, compute, labels, write and render) with
`PhaseTimer.phase`; the run's last log line gives its total, the table is
logged with ``-v``, and the phases before writing go into the graph's metadata.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager


class PhaseTimer:
    """Seconds per named phase, in the order the phases first ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the time spent inside the block to phase `name`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def total(self) -> float:
        """Seconds since the timer was made (the whole run, phases or not)."""
        return time.perf_counter() - self._start

    def metadata(self) -> dict[str, float]:
        """The phases so far, rounded to milliseconds, for a graph's metadata."""
        return {name: round(seconds, 3) for name, seconds in self.seconds.items()}

    def table(self) -> str:
        """One line per phase plus 'other' (time outside every phase) and the total."""
        total = self.total()
        rows = [
            *self.seconds.items(),
            ("other", max(total - sum(self.seconds.values()), 0.0)),
            ("total", total),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(
            f"  {name:<{width}}  {seconds:7.2f}s  {100 * seconds / total:5.1f}%" for name, seconds in rows
        )
