"""``StrictLoadHook``: ``load_from`` loads every key or fails; a deployed one never trains."""
from __future__ import annotations

from typing import Mapping

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import find_latest_checkpoint
from torch import nn

from ...checkpoint import check_state_dict, extract_state_dict, is_deployed_state
from ...deploy.build import check_block_type
from ...models import RepBlockBase, prepare_state_dict
from ...registry import HOOKS
from ...utils.errors import CheckpointError

#: What the hook does with a deployed checkpoint: ``'fold'`` loads it (testing: the model
#: switches to the deployed form), ``'error'`` refuses it (training).
DEPLOYED_ACTIONS = ('fold', 'error')


def _unfolded_blocks(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if isinstance(m, RepBlockBase) and not m.deploy)


@HOOKS.register_module()
class StrictLoadHook(Hook):
    """Make ``load_from`` strict; refuse a deployed checkpoint for training.

    mmengine loads ``load_from`` non-strictly: a checkpoint that does not fit the model
    (another arch, a truncated file) only logs its unexpected keys
    and leaves the rest of the model at its random initialization. This hook checks the
    loaded state dict against the model before mmengine copies it
    (``after_load_checkpoint``) with :func:`mmrepvgg.checkpoint.check_state_dict`: every
    missing, unexpected or mis-shaped key is an error.

    The model itself takes either form (:mod:`mmrepvgg.models.loading`): a deployed
    checkpoint switches a training-time model to the deployed form, a training-time one is
    folded into a deployed model. The hook runs that adaptation first
    (:func:`~mmrepvgg.models.prepare_state_dict`), checks the keys, and hands mmengine (and
    an ``EMAHook`` after it) the adapted state. ``deployed='fold'`` (``tools/test.py``): a
    test: the checkpoint must also fit the model's geometry (stride, dilation, groups of
    every layer), or the test is refused. ``deployed='error'`` (``tools/train.py``'s
    ``load_from``): a deployed checkpoint is refused in one line (RepVGG trains the
    multi-branch model); a training-time checkpoint of another geometry is accepted as
    initialization (the log names both geometries).

    Resuming (``--resume``) is strict too, and refuses in one line what mmengine would
    half-load: a deployed checkpoint, a checkpoint without the training state (``meta``'s
    iteration, ``message_hub``), one of the other block type (QARepVGG into a RepVGG config
    or the other way round) and any missing, unexpected or mis-shaped key.

    Args:
        deployed: ``'fold'`` or ``'error'``.
    """

    priority = 'VERY_HIGH'  # before EMAHook copies the state dict into its model

    def __init__(self, deployed: str = 'fold') -> None:
        if deployed not in DEPLOYED_ACTIONS:
            raise ValueError(f'deployed must be one of {DEPLOYED_ACTIONS}, got {deployed!r}')
        self.deployed = deployed

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if getattr(runner, '_resume', False):
            self._check_resume(runner, checkpoint)
            return
        source = getattr(runner, '_load_from', None) or 'the checkpoint'
        state = extract_state_dict(checkpoint)
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if self.deployed == 'error' and is_deployed_state(state) and _unfolded_blocks(model):
            raise CheckpointError(
                f'load_from {source} holds a deployed (folded) model (branch_reparam keys): '
                'there are no branches left to train; load the training-time checkpoint '
                '(iter_N.pth, not iter_N_deploy.pth)')
        try:
            state = prepare_state_dict(model, state,
                                       purpose='eval' if self.deployed == 'fold' else 'train')
        except CheckpointError:
            # a checkpoint of another model altogether: its keys outside the RepVGG blocks
            # (whose form may differ) say more than its geometry
            blocks = tuple(f'{name}.' for name, m in model.named_modules()
                           if isinstance(m, RepBlockBase) and name)
            check_state_dict(model, state, source=str(source), skip=blocks)
            raise
        check_state_dict(model, state, source=str(source))
        if isinstance(checkpoint.get('state_dict'), Mapping):
            checkpoint['state_dict'] = state  # adapted once: mmengine and EMAHook load it

    @staticmethod
    def _check_resume(runner, checkpoint: dict) -> None:
        """Refuse, in one line, a checkpoint that ``--resume`` would half-load."""
        source = (getattr(runner, '_load_from', None)
                  or find_latest_checkpoint(runner.work_dir) or 'the checkpoint')
        state = extract_state_dict(checkpoint)
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if is_deployed_state(state) and _unfolded_blocks(model):
            raise CheckpointError(
                f'--resume {source} holds a deployed (folded) model (branch_reparam keys): '
                'training resumes the multi-branch model; resume from the training-time '
                'checkpoint (iter_N.pth, not iter_N_deploy.pth)')
        meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
        missing = [name for name, ok in (
            ("meta['iter']", isinstance(meta, dict) and 'iter' in meta),
            ("meta['epoch']", isinstance(meta, dict) and 'epoch' in meta),
            ('message_hub', isinstance(checkpoint, dict) and 'message_hub' in checkpoint))
            if not ok]
        if missing:
            raise CheckpointError(
                f'--resume {source} is not a checkpoint of a training run (no '
                f'{", ".join(missing)}): resume from an iter_N.pth / epoch_N.pth that '
                'tools/train.py wrote; to start from weights only, use load_from')
        try:
            check_block_type(model, state, str(source))
            check_state_dict(model, state, source=str(source))
        except CheckpointError as err:  # one line: a resume is all or nothing
            raise CheckpointError('--resume: ' + '; '.join(
                line.strip() for line in str(err).splitlines() if line.strip())) from err
