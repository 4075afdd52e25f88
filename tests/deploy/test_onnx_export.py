"""tools/export_onnx.py: the ONNX graph is the folded model and ONNX Runtime reproduces PyTorch.

Small random models (randomized BN statistics) stand in for trained ones; each check
compares with the training-time PyTorch model computed here, independently of the export.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from mmengine.config import Config

import mmrepvgg  # noqa: F401
from mmrepvgg.deploy import build_model, input_shape_from_config
from mmrepvgg.deploy.onnx import (check_against_pytorch, create_session, pool_friendly_sizes,
                                  probe, read_metadata)
from mmrepvgg.utils.errors import (ExportError, MissingDependencyError, SameFileError,
                                    VerificationError)
from mmrepvgg.utils.optional import require
from tests.deploy.helpers import convert_checkpoint, export_onnx
from tests.helpers import load_tool, never_called, one_error_line, randomize_bn_, rel_err

ROOT = Path(__file__).resolve().parents[2]
export_tool = load_tool('export_onnx')

ARCH = dict(num_blocks=(1, 1, 2, 1), width_factors=(0.25, 0.25, 0.25, 0.5))  # 6 blocks
BLOCKS = 6


def cls_config() -> Config:
    return Config(dict(
        default_scope='mmpretrain',
        crop_size=32,
        data_preprocessor=dict(num_classes=4, mean=[1., 2., 3.], std=[4., 5., 6.], to_rgb=True),
        test_dataloader=dict(dataset=dict(type='CustomDataset', metainfo=dict(
            classes=('a', 'b', 'c', 'd')), pipeline=[
                dict(type='LoadImageFromFile'), dict(type='Resize', scale=32, keep_ratio=True),
                dict(type='PackInputs')])),
        model=dict(type='ImageClassifier',
                   backbone=dict(type='mmrepvgg.RepVGG', arch=ARCH, out_indices=(3, ),
                                 norm_cfg=dict(type='SyncBN')),
                   neck=dict(type='GlobalAveragePooling'),
                   head=dict(type='LinearClsHead', num_classes=4, in_channels=256))))


def seg_config() -> Config:
    norm = dict(type='SyncBN', requires_grad=True)
    return Config(dict(
        default_scope='mmseg',
        crop_size=(48, 48),
        test_dataloader=dict(dataset=dict(type='CityscapesDataset')),
        test_pipeline=[dict(type='LoadImageFromFile'),
                       dict(type='Resize', scale=(48, 48), keep_ratio=True),
                       dict(type='PackSegInputs')],
        model=dict(
            type='EncoderDecoder',
            data_preprocessor=dict(type='SegDataPreProcessor', mean=[1., 2., 3.],
                                   std=[4., 5., 6.], bgr_to_rgb=True),
            backbone=dict(type='RepVGG', arch=ARCH, out_indices=(0, 1, 2, 3),
                          dilation_plan='full', norm_cfg=norm),
            # PSPNet's pools: a 48x48 input gives a 6x6 map (1, 2, 3, 6 divide it); 40x40 a
            # 5x5 one (they do not)
            decode_head=dict(type='PSPHead', in_channels=256, in_index=3, channels=16,
                             pool_scales=(1, 2, 3, 6), num_classes=5, norm_cfg=norm),
            auxiliary_head=dict(type='FCNHead', in_channels=64, in_index=2, channels=8,
                                num_convs=1, num_classes=5, norm_cfg=norm),
            test_cfg=dict(mode='whole'))))


def save(cfg: Config, tmp: Path, name: str) -> tuple[Path, Path, torch.nn.Module]:
    """Config file, training-time checkpoint and the model (eval) behind it."""
    cfg_file = tmp / f'{name}.py'
    cfg.dump(str(cfg_file))
    torch.manual_seed(0)
    model = randomize_bn_(build_model(cfg), seed=3).eval()
    ckpt = tmp / f'{name}.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    return cfg_file, ckpt, model


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x, mode='tensor')


def ort_logits(path: Path, x: torch.Tensor) -> torch.Tensor:
    session = create_session(path)
    return torch.from_numpy(session.run(None, {'input': x.numpy()})[0])


def op_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@pytest.fixture(scope='module')
def cls_files(tmp_path_factory):
    return save(cls_config(), tmp_path_factory.mktemp('cls'), 'cls')


@pytest.fixture(scope='module')
def seg_files(tmp_path_factory):
    return save(seg_config(), tmp_path_factory.mktemp('seg'), 'seg')


def test_classifier_graph_is_the_folded_model_and_matches_pytorch(cls_files, tmp_path):
    cfg_file, ckpt, model = cls_files
    out = tmp_path / 'cls.onnx'
    assert export_tool.main([str(cfg_file), str(ckpt), str(out)]) == 0
    x = torch.randn(1, 3, 32, 32)  # default shape: the config's crop
    assert rel_err(ort_logits(out, x), logits(model, x)) <= 1e-4
    counts = op_counts(out)
    assert counts['Conv'] == BLOCKS and 'BatchNormalization' not in counts  # one conv a block
    assert counts['Gemm'] == 1
    meta = read_metadata(out)
    assert meta['mean'] == [1., 2., 3.] and meta['std'] == [4., 5., 6.]
    assert meta['bgr_to_rgb'] is True and meta['classes'] == ['a', 'b', 'c', 'd']
    assert meta['task'] == 'classification' and meta['input_shape'] == [1, 3, 32, 32]
    assert meta['folded_blocks'] == BLOCKS and meta['ort_max_rel_diff'] <= 1e-4
    onnx.checker.check_model(str(out), full_check=True)


def test_deployed_checkpoint_and_dynamic_batch(cls_files, tmp_path):
    cfg_file, ckpt, model = cls_files
    deployed = tmp_path / 'deployed.pth'
    convert_checkpoint(str(cfg_file), ckpt, deployed)
    out = tmp_path / 'dyn.onnx'
    # (no runtime metadata: the test pipeline fits images to 32, no image gives 40x48)
    report = export_onnx(str(cfg_file), deployed, out, shape=(40, 48), dynamic_batch=True,
                         exporter='torchscript', runtime_meta=False)
    assert report.deployed_checkpoint and report.fold is None
    x = torch.randn(3, 3, 40, 48)
    assert rel_err(ort_logits(out, x), logits(model, x)) <= 1e-4
    assert read_metadata(out)['input_shape'] == ['batch', 3, 40, 48]


def test_fp16_export(cls_files, tmp_path):
    cfg_file, ckpt, model = cls_files
    out = tmp_path / 'fp16.onnx'
    assert export_tool.main([str(cfg_file), str(ckpt), str(out), '--fp16']) == 0
    session = create_session(out)
    assert session.get_inputs()[0].type == 'tensor(float16)'
    x = torch.randn(1, 3, 32, 32)
    got = session.run(None, {'input': x.half().numpy()})[0]
    assert got.dtype == np.float16
    assert rel_err(torch.from_numpy(got).float(), logits(model, x)) <= 1e-2


@pytest.mark.parametrize('exporter', ['dynamo', 'torchscript'])
def test_segmentor_at_a_size_the_pools_divide(seg_files, tmp_path, exporter):
    cfg_file, ckpt, model = seg_files
    out = tmp_path / f'seg_{exporter}.onnx'
    assert export_tool.main([str(cfg_file), str(ckpt), str(out), '--exporter', exporter]) == 0
    x = torch.randn(1, 3, 48, 48)
    expected = logits(model, x)
    got = ort_logits(out, x)
    assert got.shape == expected.shape == (1, 5, 6, 6)  # decode-head logits, not resized
    assert rel_err(got, expected) <= 1e-4
    counts = op_counts(out)
    # 6 backbone blocks + 4 pyramid-pool convs + bottleneck + classifier conv
    assert counts['Conv'] == BLOCKS + 6 and 'BatchNormalization' not in counts
    assert 'Gather' not in counts and 'GatherND' not in counts  # plain pools
    meta = read_metadata(out)
    assert meta['task'] == 'segmentation' and meta['align_corners'] is False
    assert meta['classes'][:2] == ['road', 'sidewalk']  # CityscapesDataset's names


def test_pools_that_cannot_export_give_one_line_with_the_sizes_that_work(seg_files, tmp_path):
    cfg_file, ckpt, model = seg_files
    with pytest.raises(ExportError) as err:
        export_onnx(str(cfg_file), ckpt, tmp_path / 'x.onnx', shape=(40, 40),
                    exporter='torchscript', runtime_meta=False)  # (no image gives 40x40)
    message = str(err.value)
    assert '\n' not in message and '5x5 map at 40x40' in message
    # the map must be a multiple of 6: 6x6 from 41-48; below 40 none (3x3 is odd)
    assert 'input heights 41-48 and widths 41-48' in message
    assert not (tmp_path / 'x.onnx').exists()
    # the suggested sizes do work: every pool divides its input there
    sizes = pool_friendly_sizes(model, (40, 40))
    assert sizes == {'height': list(range(41, 49)), 'width': list(range(41, 49))}
    assert all(p.divides(0) and p.divides(1) for p in probe(model, (41, 48)).pools)
    assert not all(p.divides(0) for p in probe(model, (49, 48)).pools)
    # the command line: the same line, no traceback, exit 1
    proc = subprocess.run([sys.executable, 'tools/export_onnx.py', str(cfg_file), str(ckpt),
                           str(tmp_path / 'y.onnx'), '--shape', '40', '40', '--exporter',
                           'torchscript', '--no-runtime-meta'], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(ROOT),
                                              OMP_NUM_THREADS='1'))
    assert proc.returncode == 1
    assert 'Traceback' not in proc.stderr + proc.stdout
    assert 'error: Cannot export at 40x40' in proc.stderr


def test_dynamo_exports_those_pools_exactly(seg_files, tmp_path):
    cfg_file, ckpt, model = seg_files
    out = tmp_path / 'seg40.onnx'
    report = export_onnx(str(cfg_file), ckpt, out, shape=(40, 40), runtime_meta=False)
    assert 'exported exactly as gathers' in report.note
    x = torch.randn(1, 3, 40, 40)
    assert rel_err(ort_logits(out, x), logits(model, x)) <= 1e-4


def test_existing_output_is_refused_without_force(cls_files, tmp_path, capsys, monkeypatch):
    cfg_file, ckpt, _ = cls_files
    out = tmp_path / 'cls.onnx'
    out.write_bytes(b'keep me')
    # refused before any work: the exporter is never reached
    monkeypatch.setattr(export_tool, 'load_model', never_called)
    assert export_tool.main([str(cfg_file), str(ckpt), str(out)]) == 1
    assert out.read_bytes() == b'keep me'
    assert capsys.readouterr().err.strip() == (f'error: {out} exists; pass --force (force=True) '
                                               'to overwrite it')
    monkeypatch.undo()
    assert export_tool.main([str(cfg_file), str(ckpt), str(out), '--force']) == 0
    assert onnx.load(str(out)).graph.node
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cls.onnx']  # no temp file left


@pytest.mark.parametrize('link', ['same', 'symlink', 'hardlink'])
def test_output_is_never_the_checkpoint_even_with_force(cls_files, tmp_path, capsys, link):
    cfg_file, ckpt, _ = cls_files
    copy = tmp_path / 'ckpt.pth'
    copy.write_bytes(ckpt.read_bytes())
    out = copy
    if link == 'symlink':
        out = tmp_path / 'link.onnx'
        out.symlink_to(copy)
    elif link == 'hardlink':
        out = tmp_path / 'hard.onnx'
        os.link(copy, out)
    before = copy.read_bytes()
    assert export_tool.main([str(cfg_file), str(copy), str(out), '--force']) == 1
    assert 'is the input' in one_error_line(capsys)
    assert copy.read_bytes() == before
    # the config is an input too; the library refuses alike
    with pytest.raises(SameFileError):
        export_onnx(str(cfg_file), copy, cfg_file, force=True)


def test_bad_output_paths_fail_before_the_work(cls_files, tmp_path, capsys):
    cfg_file, ckpt, _ = cls_files
    assert export_tool.main([str(cfg_file), str(ckpt), str(tmp_path)]) == 1
    assert 'is a directory' in one_error_line(capsys)
    (tmp_path / 'file').write_text('x')
    assert export_tool.main([str(cfg_file), str(ckpt), str(tmp_path / 'file' / 'a.onnx')]) == 1
    assert 'is a file, not a directory' in one_error_line(capsys)


def test_bad_inputs_fail_cleanly(cls_files, seg_files, tmp_path, capsys):
    cfg_file, ckpt, _ = cls_files
    missing = tmp_path / 'missing.pth'
    assert export_tool.main([str(cfg_file), str(missing), str(tmp_path / 'a.onnx')]) == 1
    assert capsys.readouterr().err.splitlines() == [f'error: Checkpoint not found: {missing}']
    # a checkpoint of another model: strict key matching refuses it, naming the keys
    seg_ckpt = seg_files[1]
    assert export_tool.main([str(cfg_file), str(seg_ckpt), str(tmp_path / 'b.onnx')]) == 1
    err = capsys.readouterr().err.splitlines()  # the log lines come first
    assert [line for line in err if line.startswith('error:')] == [err[-3]]
    assert err[-3] == (f'error: State dict from {seg_ckpt} (mmrepvgg layout) does not fit '
                       'ImageClassifier:')
    assert err[-2] == '  missing (2): head.fc.bias, head.fc.weight'
    assert err[-1].startswith('  unexpected (46): auxiliary_head.')
    assert not any(tmp_path.iterdir())


def test_default_shape_is_the_test_crop():
    assert input_shape_from_config(Config.fromfile(ROOT / 'configs/repvgg-a0_in1k.py')) \
        == (224, 224)  # resize 256 then crop 224
    assert input_shape_from_config(
        Config.fromfile(ROOT / 'configs/pspnet_repvgg-b1g2-fast_cityscapes.py')) == (713, 713)


def test_paper_psp_shape_gives_a_map_every_pool_divides():
    """PSPNet-B1g2-fast at 713x713: a 90x90 map, which 1, 2, 3 and 6 divide; at 257x257 a
    33x33 one, which 2 and 6 do not (the TorchScript exporter cannot export it)."""
    cfg = Config.fromfile(ROOT / 'configs/pspnet_repvgg-b1g2-fast_cityscapes.py')
    with torch.device('meta'):
        model = build_model(cfg)
    pools = probe(model, (713, 713)).pools
    assert {p.input_size for p in pools} == {(90, 90)} and len(pools) == 4
    assert all(p.divides(0) and p.divides(1) for p in pools)
    assert {p.input_size for p in probe(model, (257, 257)).pools} == {(33, 33)}


def test_qarepvgg_model_exports_folded(qa_digits_checkpoint, tmp_path):
    """A QARepVGG checkpoint (the digits QA demo config) exports as the same plain
    graph: one Conv per block, no BatchNormalization, ONNX Runtime = the training-time model."""
    config, ckpt = qa_digits_checkpoint
    cfg = Config.fromfile(str(config))
    model = build_model(cfg)
    model.load_state_dict(torch.load(ckpt, weights_only=True)['state_dict'])
    model.eval()
    out = tmp_path / 'qa.onnx'
    assert export_tool.main([str(config), str(ckpt), str(out), '--shape', '32', '32']) == 0
    x = torch.rand(4, 3, 32, 32)  # the normalized tensor (pixels / 255), as the graph takes
    session = create_session(out)
    for i in range(4):
        got = torch.from_numpy(session.run(None, {'input': x[i:i + 1].numpy()})[0])
        assert rel_err(got, logits(model, x[i:i + 1])) <= 1e-4
    counts = op_counts(out)
    assert counts['Conv'] == 9 and 'BatchNormalization' not in counts  # 1 + 1-2-4-1 blocks
    meta = read_metadata(out)
    assert meta['block'] == 'QARepVGGBlock' and meta['folded_blocks'] == 9


def test_a_missing_package_is_one_line_and_a_broken_one_keeps_its_error(
        cls_files, tmp_path, capsys, monkeypatch):
    cfg_file, ckpt, _ = cls_files
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match=r'pip install onnxruntime==\S+ '):
        require('onnxruntime')
    assert export_tool.main([str(cfg_file), str(ckpt), str(tmp_path / 'a.onnx')]) == 1
    assert capsys.readouterr().err.splitlines() == [
        'error: onnxruntime is not installed: pip install onnxruntime==1.31.1 '
        '(requirements/deploy.txt; make env installs it)']
    # installed, but it cannot import what it needs: its own error, not "not installed"
    (tmp_path / 'brokenpkg.py').write_text('import nonexistent_dependency_of_brokenpkg\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as err:
        require('brokenpkg')
    assert not isinstance(err.value, MissingDependencyError)
    assert err.value.name == 'nonexistent_dependency_of_brokenpkg'


def test_a_bug_is_not_reported_as_bad_input(cls_files, tmp_path, monkeypatch):
    """Only the typed errors of bad input become one error: line; any other RuntimeError or
    ValueError (a bug in torch, onnx or here) keeps its traceback."""
    cfg_file, ckpt, _ = cls_files

    def broken(*args, **kwargs):
        raise RuntimeError('a bug in the session code')

    monkeypatch.setattr('mmrepvgg.deploy.onnx.create_session', broken)
    with pytest.raises(RuntimeError, match='a bug in the session code'):
        export_tool.main([str(cfg_file), str(ckpt), str(tmp_path / 'a.onnx')])
    assert not (tmp_path / 'a.onnx').exists()


def test_onnx_runtime_mismatch_names_what_was_compared():
    ref = [torch.tensor([1., 2.])]
    with pytest.raises(VerificationError, match=r'^1 of 2 output values of ONNX Runtime \(fp16\) '
                       'are NaN or Inf: float16 overflows on this model$'):
        check_against_pytorch(ref, [torch.tensor([1., float('inf')])], 'fp16')
    with pytest.raises(VerificationError, match='output values of PyTorch are NaN or Inf: the '
                       "model's weights or BN statistics are broken"):
        check_against_pytorch([torch.tensor([float('nan'), 2.])], ref)
    with pytest.raises(VerificationError, match=r'^ONNX Runtime does not reproduce PyTorch on '
                       r'the test images: max rel diff 0\.25 > 0\.0001'):
        check_against_pytorch(ref, [torch.tensor([1., 2.5])], where=' on the test images')
    with pytest.raises(VerificationError, match=r'shapes differ: \(2,\) of PyTorch, \(1,\) of '
                       r'ONNX Runtime \(fp32\)'):
        check_against_pytorch(ref, [torch.tensor([1.])])
    assert check_against_pytorch(ref, [torch.tensor([1., 2.0001])])[1] <= 1e-4


def test_the_other_block_type_is_refused_by_name(qa_digits_checkpoint, tmp_path, capsys):
    """A QARepVGG checkpoint with the RepVGG twin of its config: the targeted message of
    tools/deploy_convert.py (one loader), not a list of mismatched keys."""
    config, ckpt = qa_digits_checkpoint
    out = tmp_path / 'qa.onnx'
    assert export_tool.main([str(ROOT / 'configs/demo/repvgg-small_digits.py'), str(ckpt),
                             str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f'error: {ckpt} (mmrepvgg layout) holds '
                                               'QARepVGGBlock weights but the model is built '
                                               'with RepVGGBlock; set model.backbone.block_cfg')
    assert not out.exists()
