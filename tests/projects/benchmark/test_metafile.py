"""configs/metafile.yml: the paper's numbers, and every model in it can be built."""
import pytest
from torch import nn

from mmrepvgg import RepVGG
from projects.benchmark.metafile import load_metafile
from projects.benchmark.models import BASELINES
from mmrepvgg.models.arch import ARCH_ZOO
from tests.helpers import METAFILE

TABLE4_REPVGG = ['A0', 'A1', 'B0', 'A2', 'B1g4', 'B1g2', 'B1', 'B2g4', 'B2']
TABLE5_REPVGG = ['B2g4', 'B3g4', 'B3']


def test_tables_and_specs():
    models = load_metafile(METAFILE)
    t4 = [m.spec for m in models.values() if 4 in m.results and m.role == 'ours']
    t5 = [m.spec for m in models.values() if 5 in m.results and m.role == 'ours']
    assert t4 == TABLE4_REPVGG and t5 == TABLE5_REPVGG
    for m in models.values():
        if m.spec is not None:
            assert m.spec in ARCH_ZOO or m.spec in BASELINES
    assert models['RepVGG-A0'].top1(4) == 72.41
    assert models['RepVGG-B2g4'].top1(4) == 78.50 and models['RepVGG-B2g4'].top1(5) == 79.38
    assert models['PSPNet-RepVGG-B2'].results[8] == {'mIoU': 80.57, 'Mean Pixel Acc': 96.50}
    assert len([m for m in models.values() if m.task == 'seg' and m.collection == 'RepVGG']) == 6


def test_qarepvgg_rows_are_configs_not_yet_trained():
    qa = [m for m in load_metafile(METAFILE).values() if m.collection == 'QARepVGG']
    assert [m.name for m in qa] == ['QARepVGG-A0', 'QARepVGG-B0', 'QARepVGG-B1g2',
                                    'QARepVGG-B1g4', 'QARepVGG-B2', 'PSPNet-QARepVGG-B1g2-fast']
    for m in qa:
        assert m.status == 'not yet trained here' and not m.results and m.spec is None
        assert m.config and 'qarepvgg' in m.config and m.role == 'ours'
    assert [m.task for m in qa] == ['cls'] * 5 + ['seg']


@pytest.mark.parametrize('arch', sorted(set(TABLE4_REPVGG + TABLE5_REPVGG)))
def test_paper_params_match_the_deployed_model(arch):
    """Exact by construction: the paper truncates the parameter count to 2 decimals."""
    paper = next(m for m in load_metafile(METAFILE).values() if m.spec == arch).paper
    backbone = RepVGG(arch, deploy=True)
    fc = nn.Linear(backbone.out_channels[0], 1000)
    n = sum(p.numel() for m in (backbone, fc) for p in m.parameters())
    assert n // 10_000 == round(paper['Params (M)'] * 100)


def test_configs_exist_and_name_their_model():
    import os.path as osp

    from projects.benchmark.metafile import find_paper_model
    models = load_metafile(METAFILE)
    with_config = [m for m in models.values() if m.config]
    assert len(with_config) >= 12
    for m in with_config:
        assert osp.isfile(m.config), m.config
        stem = osp.splitext(osp.basename(m.config))[0]
        assert find_paper_model(stem, models) is m
