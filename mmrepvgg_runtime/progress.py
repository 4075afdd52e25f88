"""A plain progress bar on stderr (no tqdm): redrawn in place on a terminal, a line every
10 % otherwise (logs)."""
from __future__ import annotations

import sys
import time
from typing import IO


class Progress:
    """Counts finished items and shows ``desc [#####.....] n/total, rate, eta``.

    Args:
        total: How many items.
        desc: What is counted.
        enabled: Show anything at all.
        stream: Where (default stderr).
        width: Characters of the bar.
    """

    def __init__(self, total: int, desc: str = '', enabled: bool = True,
                 stream: IO[str] | None = None, width: int = 30) -> None:
        self.total, self.desc, self.width = max(int(total), 0), desc, width
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.total > 0
        self.tty = bool(getattr(self.stream, 'isatty', lambda: False)())
        self.n = 0
        self.start = time.perf_counter()
        self._last_decile = -1
        if self.enabled and self.tty:
            self._draw()

    def line(self) -> str:
        """The current bar as text."""
        done = int(self.width * self.n / self.total) if self.total else self.width
        elapsed = time.perf_counter() - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.n) / rate if rate > 0 else float('nan')
        tail = f', {rate:.2f}/s, eta {eta:.0f} s' if self.n < self.total and rate > 0 else \
            f', {elapsed:.1f} s'
        return (f'{self.desc} [{"#" * done}{"." * (self.width - done)}] '
                f'{self.n}/{self.total}{tail}')

    def _draw(self) -> None:
        self.stream.write('\r' + self.line())
        self.stream.flush()

    def update(self, n: int = 1) -> None:
        """``n`` more items are done."""
        self.n = min(self.total, self.n + n)
        if not self.enabled:
            return
        if self.tty:
            self._draw()
            return
        decile = 10 * self.n // self.total
        if decile != self._last_decile:
            self._last_decile = decile
            self.stream.write(self.line() + '\n')
            self.stream.flush()

    def close(self) -> None:
        """End the bar's line (on a terminal)."""
        if self.enabled and self.tty:
            self.stream.write('\n')
            self.stream.flush()
