"""The environment that `make env` builds: compiled mmcv ops, the stack imports, pinned versions."""
from importlib.metadata import version
from pathlib import Path

import pytest

REQ = Path(__file__).resolve().parents[1] / 'requirements'


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (REQ / name).read_text().splitlines():
        line = line.split('#')[0].strip()
        if '==' in line:
            pkg, ver = line.split('==')
            pins[pkg.strip()] = ver.strip()
    return pins


def test_mmcv_ops_extension_is_compiled_and_runs():
    import torch
    from mmcv.ops import nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
    _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]


def test_stack_imports():
    import mmpretrain.models  # noqa: F401
    import mmseg.models  # noqa: F401

    import mmrepvgg  # noqa: F401


@pytest.mark.parametrize('req', ['torch.txt', 'build.txt', 'runtime.txt', 'deploy.txt',
                                 'tests.txt'])
def test_installed_versions_are_the_pinned_ones(req):
    for pkg, pinned in _pins(req).items():
        assert version(pkg).split('+')[0] == pinned, pkg


def test_constraints_cover_the_pins():
    constraints = {k.lower(): v for k, v in _pins('constraints.txt').items()}
    for req in ('torch.txt', 'build.txt', 'runtime.txt', 'deploy.txt', 'tests.txt'):
        for pkg, pinned in _pins(req).items():
            assert constraints.get(pkg.lower()) == pinned, (req, pkg)
