"""Shared test utilities."""
from __future__ import annotations

import importlib.util
import runpy
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from torch import Tensor

from projects.exactness.exactness import randomize_bn_  # noqa: F401  (re-exported for tests)

ROOT = Path(__file__).resolve().parents[1]
#: The project's metafile (the paper's numbers), which the tools pass to the library.
METAFILE = ROOT / 'configs' / 'metafile.yml'


def rel_err(a: Tensor, b: Tensor) -> float:
    """Max abs difference relative to the output scale."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def one_error_line(capsys_or_text) -> str:
    """The one ``error: ...`` line a tool printed on stderr, asserting that stderr holds
    nothing else (blank lines aside).

    Args:
        capsys_or_text: pytest's ``capsys`` (its stderr is read, which consumes it) or the
            stderr text itself (for a caller that also needs stdout or the whole text).

    Returns:
        str: The error line.
    """
    err = capsys_or_text if isinstance(capsys_or_text, str) else capsys_or_text.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    return lines[0]


def run_script(monkeypatch: pytest.MonkeyPatch, tool: str, *argv: str) -> int:
    """Run the script ``tool`` (a path from the repository root, e.g. ``'tools/benchmark.py'``)
    as ``__main__`` with the command line ``argv``; its exit status.

    The script must exit through ``SystemExit`` (every tool ends in ``sys.exit``), or the
    calling test fails.
    """
    monkeypatch.setattr(sys, 'argv', [tool, *argv])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(ROOT / tool), run_name='__main__')
    return info.value.code


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` imported as a module, to call its ``main`` or ``parse_args``."""
    spec = importlib.util.spec_from_file_location(f'tools_{name}', ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def never_called(*args, **kwargs):
    """A stand-in for a step that must not run (a check before it has to refuse first)."""
    raise AssertionError('a step ran that the checks before it must have refused')


def refused(proc: subprocess.CompletedProcess, match: str) -> str:
    """The one ``error:`` line of a tool that exited with status 1 (no traceback)."""
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and match in errors[0], proc.stderr[-3000:]
    return errors[0]
