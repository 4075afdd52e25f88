"""Markdown pieces shared by the report renderers (benchmark, complexity, int8, studies)."""
from __future__ import annotations

from typing import Any, Sequence


def fmt(value: float | None, spec: str, suffix: str = '', missing: str = '-') -> str:
    """``value`` formatted with ``spec`` and ``suffix``, or ``missing`` when it is None.

    Args:
        value: The number (None: not measured).
        spec: A format spec (``'.2f'``, ``'.3g'``).
        suffix: Appended to a number (``'x'``).
        missing: What a None shows.
    """
    return missing if value is None else f'{value:{spec}}{suffix}'


def table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A markdown table: the header, the rule and one line per row (cells as given)."""
    return (['| ' + ' | '.join(map(str, head)) + ' |', '|' + '---|' * len(head)]
            + ['| ' + ' | '.join(map(str, row)) + ' |' for row in rows])
