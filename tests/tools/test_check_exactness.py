"""tools/check_exactness.py is argparse and print over projects.exactness.exactness: its tables
are made by fold_error_table / fold_errors_markdown and precision_report /
precision_markdown, tested here directly (the measurements themselves: tests/models and
tests/projects/test_exactness_precision.py)."""
from __future__ import annotations

import pytest

from projects.exactness import exactness as ex
from projects.exactness.exactness import FoldErrors, PrecisionErrors


def test_fold_errors_markdown_has_every_row_and_the_worst():
    rows = [('A0', 'none', FoldErrors(1e-15, 2e-6, 3e-6)),
            ('B1g2', 'fast', FoldErrors(4e-15, 1e-6, 5e-6))]
    assert ex.fold_errors_markdown(rows, 'QARepVGGBlock') == '\n'.join([
        'QARepVGGBlock', '',
        '| arch | plan | fp64 | fp32 reference backend | fp32 default backend |',
        '|---|---|---|---|---|',
        '| A0 | none | 1.0e-15 | 2.0e-06 | 3.0e-06 |',
        '| B1g2 | fast | 4.0e-15 | 1.0e-06 | 5.0e-06 |',
        '| **worst** | | 4.0e-15 | 2.0e-06 | 5.0e-06 |'])


def test_fold_error_table_takes_every_arch_of_the_block_and_every_plan(monkeypatch):
    calls = []
    monkeypatch.setattr(ex, 'fold_errors', lambda arch, plan, shape, seed, block: calls.append(
        (arch, plan, shape, seed, block)) or FoldErrors(0, 0, 0))
    rows = ex.fold_error_table(block='QARepVGGBlock', progress=False)
    assert len(rows) == 13 * 3 and 'D2se' not in {a for a, *_ in rows}  # no SE in QARepVGG
    assert calls[:3] == [('A0', None, (40, 48), 0, 'QARepVGGBlock'),
                         ('A0', 'full', (40, 48), 0, 'QARepVGGBlock'),
                         ('A0', 'fast', (40, 48), 0, 'QARepVGGBlock')]
    assert [r[:2] for r in ex.fold_error_table(['B2'], ['fast'], progress=False)] == [
        ('B2', 'fast')]
    assert ex.block_archs('RepVGGBlock')[-1] == 'D2se' and len(ex.block_archs()) == 14


def test_precision_markdown_rows_and_skipped_rows():
    rows = [PrecisionErrors('A0', 'fp16', 'cpu', 2e-3, 2.7e-3, 3.1e-3),
            PrecisionErrors('A0', 'bf16', 'cpu', skipped='bf16 on CPU needs oneDNN')]
    assert ex.precision_markdown(rows, ['a note', 'another'], 'cuda') == '\n'.join([
        'Output in fp16/bf16 vs the same model in fp32 on cuda (a note; another):', '',
        '| model | dtype | deployed: max rel | deployed: rel L2 | training-time: max rel |',
        '|---|---|---|---|---|',
        '| A0 | fp16 | 2.0e-03 | 2.7e-03 | 3.1e-03 |',
        '| A0 | bf16 | not run: bf16 on CPU needs oneDNN | | |'])


def _record(monkeypatch):
    calls = []

    def archs(arch, dtypes, shape, batch, seed, device):
        calls.append(('arch', arch, shape, batch))
        return [PrecisionErrors(arch, d, device) for d in dtypes]

    def ckpt(config, checkpoint, dtypes, shape, batch, seed, device):
        calls.append(('checkpoint', config, shape, batch))
        return [PrecisionErrors('trained', d, device) for d in dtypes], 'logits on 8 images'

    monkeypatch.setattr(ex, 'precision_errors', archs)
    monkeypatch.setattr(ex, 'checkpoint_precision_errors', ckpt)
    return calls


def test_precision_report_defaults(monkeypatch):
    calls = _record(monkeypatch)
    rows, notes = ex.precision_report(('fp16', ), progress=False)  # A0 B0 B2 at 224x224
    assert calls == [('arch', a, (224, 224), 1) for a in ('A0', 'B0', 'B2')]
    assert [r.arch for r in rows] == ['A0', 'B0', 'B2']
    assert notes == ['A0, B0, B2: backbone output, random weights with BN statistics '
                     'estimated on a random input, input 1x3x224x224']
    calls.clear()  # a checkpoint alone: 8 images, its own input size, no random archs
    rows, notes = ex.precision_report(('fp16', 'bf16'), checkpoint=('cfgs/x_y.py', 'c.pth'),
                                      progress=False)
    assert calls == [('checkpoint', 'cfgs/x_y.py', None, 8)]
    assert notes == ['x_y: trained weights, logits on 8 images'] and len(rows) == 2
    calls.clear()  # both, with a batch and shape given
    rows, notes = ex.precision_report(('fp16', ), ['B1'], (32, 48), 2,
                                      checkpoint=('x.py', 'c.pth'), progress=False)
    assert calls == [('checkpoint', 'x.py', (32, 48), 2), ('arch', 'B1', (32, 48), 2)]
    assert [r.arch for r in rows] == ['trained', 'B1'] and notes[1].endswith('2x3x32x48')


def test_precision_report_checks_the_device_first(monkeypatch):
    calls = _record(monkeypatch)
    with pytest.raises(ValueError, match='Invalid device string'):
        ex.precision_report(('fp16', ), device='gpu0')
    assert calls == []
