"""Read the paper's numbers (and the QARepVGG configs' rows) from a metafile.

The project's metafile is ``configs/metafile.yml`` (the paper's Tables 4, 5 and 8, OpenMMLab's
model-index format); the package does not know where the checkout is, so the tools pass its
path and hand the loaded models to the functions that quote the paper.
"""
from __future__ import annotations

import os
import os.path as osp
from dataclasses import dataclass, field

from mmengine.fileio import load


@dataclass
class PaperModel:
    """One model of the paper's tables.

    Attributes:
        name: As the paper names it (``'RepVGG-A0'``, ``'ResNet-50'``, ``'PSPNet-RepVGG-B2'``).
        role: ``'ours'`` (RepVGG) or ``'baseline'``.
        spec: What :func:`projects.benchmark.models.build_from_spec` builds for it (arch or baseline
            name), or None if this project cannot build it (EfficientNet, RegNetX, PSPNets).
        task: ``'cls'`` or ``'seg'``.
        paper: Speed (1080Ti), Params (M), Theo FLOPs (B), Wino MULs (B) as printed.
        results: ``{table: metrics}``, e.g. ``{4: {'Top 1 Accuracy': 72.41}}``.
        config: The project's config of the model, if there is one.
        collection: ``'RepVGG'`` (the paper's tables) or ``'QARepVGG'`` (this project's
            QARepVGG configs).
        status: E.g. ``'not yet trained here'`` for a config without results.
    """

    name: str
    role: str
    spec: str | None
    task: str
    paper: dict = field(default_factory=dict)
    results: dict[int, dict] = field(default_factory=dict)
    config: str | None = None
    collection: str = 'RepVGG'
    status: str | None = None

    def top1(self, table: int | None = None) -> float | None:
        """Top-1 of the given table (default: the first the model appears in)."""
        if not self.results:
            return None
        res = self.results.get(table) if table is not None else next(iter(self.results.values()))
        return None if res is None else res.get('Top 1 Accuracy', res.get('mIoU'))


def load_metafile(path: str | os.PathLike) -> dict[str, PaperModel]:
    """Load a metafile.

    Args:
        path: Its path (the project's: ``configs/metafile.yml``).

    Returns:
        ``{name: PaperModel}`` in file order.
    """
    data = load(str(path), file_format='yaml')
    models = {}
    for m in data['Models']:
        results = {int(r['Table']): dict(r['Metrics']) for r in m.get('Results') or []}
        tasks = [r['Task'] for r in m.get('Results') or []] or [m.get('Task')]
        task = 'seg' if 'Semantic Segmentation' in tasks else 'cls'
        spec = m.get('Arch') if task == 'cls' else None
        spec = spec or (m.get('Baseline') if task == 'cls' else None)
        models[m['Name']] = PaperModel(m['Name'], m.get('Role', 'ours'), spec, task,
                                       dict(m.get('Paper', {})), results, m.get('Config'),
                                       m.get('In Collection', 'RepVGG'), m.get('Status'))
    return models


def find_paper_model(name: str, models: dict[str, PaperModel]) -> PaperModel | None:
    """The metafile entry of a measured model.

    Args:
        name: ``'RepVGG-A0'``, ``'A0'``, ``'ResNet-50'`` or a config's file stem
            (``'repvgg-a0_in1k'``, as :func:`~projects.benchmark.models.build_from_spec`
            names models built from configs).
        models: :func:`load_metafile`'s result.

    Returns:
        The entry, or None.
    """
    if name in models:
        return models[name]
    lower = name.lower()
    for m in models.values():
        stem = osp.splitext(osp.basename(m.config))[0].lower() if m.config else None
        if lower in (m.name.lower(), (m.spec or '').lower(), stem):
            return m
    return None
