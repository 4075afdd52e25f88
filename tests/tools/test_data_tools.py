"""tools/make_tiny_cityscapes.py and tools/prepare_cityscapes.py (cityscapesscripts)."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from demo.datasets import TRAIN_CLASSES, make_digits_folder
from tests.helpers import load_tool, one_error_line


def test_tiny_cityscapes_layout_and_prepare(tmp_path):
    root = tmp_path / 'cs'
    assert load_tool('make_tiny_cityscapes').main([str(root), '--num-train', '4', '--num-val',
                                                   '2', '--size', '64', '128']) == 0
    imgs = sorted((root / 'leftImg8bit').rglob('*_leftImg8bit.png'))
    assert len(imgs) == 6
    assert {p.parts[-3] for p in imgs} == {'train', 'val'}
    for img in imgs:
        split, city = img.parts[-3], img.parts[-2]
        stem = img.name.replace('_leftImg8bit.png', '')
        assert stem.startswith(city + '_')
        gt = root / 'gtFine' / split / city
        for suffix in ('polygons.json', 'labelIds.png', 'instanceIds.png', 'color.png'):
            assert (gt / f'{stem}_gtFine_{suffix}').is_file()
        assert not (gt / f'{stem}_gtFine_labelTrainIds.png').exists()  # prepare's job
        poly = json.loads((gt / f'{stem}_gtFine_polygons.json').read_text())
        assert (poly['imgHeight'], poly['imgWidth']) == (64, 128)
        assert Image.open(img).size == (128, 64)

    load_tool('prepare_cityscapes').main([str(root)])
    labels = sorted(root.rglob('*_gtFine_labelTrainIds.png'))
    assert len(labels) == 6
    values = set()
    for lbl in labels:
        values |= set(np.unique(np.asarray(Image.open(lbl))).tolist())
    assert values <= set(range(19)) | {255} and 255 in values  # ego vehicle is ignored
    train_values = set()
    for lbl in (root / 'gtFine' / 'train').rglob('*_labelTrainIds.png'):
        train_values |= set(np.unique(np.asarray(Image.open(lbl))).tolist())
    assert set(range(len(TRAIN_CLASSES))) <= train_values  # all 19 classes in train
    assert (root / 'train.txt').read_text().splitlines()[0].startswith('aachen/aachen_')


def test_prepare_without_polygons_is_a_clear_error(tmp_path, capsys):
    assert load_tool('prepare_cityscapes').main([str(tmp_path)]) == 1
    assert 'gtFine_trainvaltest.zip' in one_error_line(capsys)


def test_mmseg_reads_the_tiny_dataset(tmp_path):
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    root = tmp_path / 'cs'
    assert load_tool('make_tiny_cityscapes').main([str(root), '--num-train', '2', '--num-val',
                                                   '1', '--size', '32', '64', '--prepare']) == 0
    init_default_scope('mmseg')
    ds = DATASETS.build(dict(type='CityscapesDataset', data_root=str(root),
                             data_prefix=dict(img_path='leftImg8bit/train',
                                              seg_map_path='gtFine/train'),
                             pipeline=[dict(type='LoadImageFromFile'),
                                       dict(type='LoadAnnotations'),
                                       dict(type='PackSegInputs')]))
    assert len(ds) == 2
    sample = ds[0]
    assert tuple(sample['inputs'].shape) == (3, 32, 64)
    assert sample['data_samples'].gt_sem_seg.data.shape[-2:] == (32, 64)


def test_digits_folder(tmp_path):
    counts = make_digits_folder(tmp_path, size=16)
    assert counts == {'train': 1347, 'test': 450}
    assert sorted(p.name for p in (tmp_path / 'train').iterdir()) == [str(i) for i in range(10)]
    img = Image.open(next((tmp_path / 'test' / '3').iterdir()))
    assert img.size == (16, 16) and img.mode == 'RGB'


def test_tiny_cityscapes_never_overwrites_files_it_did_not_write(tmp_path):
    """Pointed at a folder with real Cityscapes names, it refuses and changes nothing."""
    root = tmp_path / 'cityscapes'
    img = root / 'leftImg8bit' / 'train' / 'aachen' / 'aachen_000000_000019_leftImg8bit.png'
    poly = root / 'gtFine' / 'train' / 'aachen' / 'aachen_000000_000019_gtFine_polygons.json'
    for path, text in ((img, 'real image'), (poly, 'real polygons'), (root / 'train.txt', 'x')):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    tool = load_tool('make_tiny_cityscapes')
    assert tool.main([str(root), '--num-train', '2', '--num-val', '1', '--size', '32', '64',
                      '--prepare']) == 1
    assert img.read_text() == 'real image' and poly.read_text() == 'real polygons'
    assert (root / 'train.txt').read_text() == 'x'
    assert sorted(p.name for p in root.rglob('*') if p.is_file()) == sorted(
        [img.name, poly.name, 'train.txt'])
    # its own output is replaced on a second run
    mine = tmp_path / 'tiny'
    for _ in range(2):
        assert tool.main([str(mine), '--num-train', '2', '--num-val', '1', '--size', '32',
                          '64']) == 0
    assert len(list((mine / 'leftImg8bit').rglob('*.png'))) == 3
