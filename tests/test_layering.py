"""The package's declared layer order (docs/architecture.md), checked on the source.

Every module of ``mmrepvgg/`` belongs to one layer; a module imports only its own layer and
the layers below it, function-level imports included; the module import graph has no
cycle; a function-level import is only for an optional dependency; no module is over 700
lines; the package never imports the checkout's ``tools/``, ``projects/`` or ``demo/``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'mmrepvgg'

#: Low to high: a module may import from its own layer and every layer to its left.
LAYERS = ('utils', 'checkpoint', 'models', 'deploy', 'engine', 'runner', 'cli', 'root')
#: Modules that are not in a subpackage of their layer's name.
SPECIAL = {'mmrepvgg': 'root', 'mmrepvgg.registry': 'utils', 'mmrepvgg.version': 'utils',
           'mmrepvgg.checkpoint': 'checkpoint', 'mmrepvgg.cli': 'cli'}
#: Imported inside functions only because they are optional or heavy task codebases that a
#: config may not need (requirements/deploy.txt, tests.txt; mmseg / mmpretrain).
LAZY_ALLOWED = ('onnx', 'onnxruntime', 'onnxscript', 'timm', 'matplotlib', 'sklearn',
                'cityscapesscripts', 'mmseg', 'mmpretrain')
#: Folders of the checkout that are not the package: it never imports them.
OUTSIDE = ('tools', 'projects', 'demo', 'configs', 'tests')
MAX_LINES = 700


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob('*.py'))}


def layer_of(module: str) -> str:
    if module in SPECIAL:
        return SPECIAL[module]
    top = module.split('.')[1]
    assert top in LAYERS, f'{module}: not in a declared layer ({", ".join(LAYERS)})'
    return top


def resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The mmrepvgg modules an import statement imports (a ``from pkg import sub`` names the
    submodule where ``sub`` is one)."""
    is_pkg = MODULES[module].name == '__init__.py'
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split('.')[0] == 'mmrepvgg']
    if node.level:
        base = module.split('.') if is_pkg else module.split('.')[:-1]
        base = base[:len(base) - node.level + 1]
        target = '.'.join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ''
    if target.split('.')[0] != 'mmrepvgg':
        return []
    out = []
    for alias in node.names:
        sub = f'{target}.{alias.name}'
        out.append(sub if sub in MODULES else target)
    return out


def imports() -> list[tuple[str, str, int, bool]]:
    """``(importer, imported, line, in_function)`` for every internal import statement."""
    edges = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        in_function = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                in_function |= {id(n) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in resolve(module, node):
                    edges.append((module, target, node.lineno, id(node) in in_function))
    return edges


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_imports_follow_the_layer_order():
    bad = [f'{a}:{line} ({layer_of(a)}) imports {b} ({layer_of(b)})'
           for a, b, line, _ in imports()
           if LAYERS.index(layer_of(b)) > LAYERS.index(layer_of(a))]
    assert not bad, 'imports against the layer order:\n' + '\n'.join(bad)


def test_no_import_cycle():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for a, b, _, _ in imports():
        if a != b:
            graph[a].add(b)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for module in MODULES:
        if module not in state:
            cycle = visit(module)
            assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_function_level_imports_only_for_optional_dependencies():
    bad = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         ['.' * node.level + (node.module or '')]
                         if isinstance(node, ast.ImportFrom) else [])
                for name in names:
                    if name.split('.')[0] not in LAZY_ALLOWED:
                        bad.append(f'{module}:{node.lineno} imports {name} inside {func.name}')
    assert not bad, 'function-level imports of required or internal modules:\n' + '\n'.join(bad)


def test_the_package_never_reaches_into_the_checkout():
    bad = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ''] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            bad += [f'{module}:{node.lineno} imports {n}' for n in names
                    if n.split('.')[0] in OUTSIDE]
        if '__file__' in path.read_text():
            bad.append(f'{module} locates files through __file__')
    assert not bad, '\n'.join(bad)


@pytest.mark.parametrize('module', sorted(MODULES))
def test_module_size(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f'{module}: {lines} lines (split it on its seams)'


def test_the_checker_sees_a_violation(tmp_path):
    """The resolver finds relative and function-level imports (the tests above can fail)."""
    tree = ast.parse('def f():\n    from ..deploy.convert import load_model\n')
    node = tree.body[0].body[0]
    assert resolve('mmrepvgg.models.block', node) == ['mmrepvgg.deploy.convert']
    assert LAYERS.index(layer_of('mmrepvgg.deploy.convert')) > LAYERS.index(
        layer_of('mmrepvgg.models.block'))
