"""``StrictLoadHook``: ``load_from`` loads every key or fails; deployed checkpoints are known."""
from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.runner import find_latest_checkpoint
from torch import nn

from ...checkpoint import check_state_dict, extract_state_dict, is_deployed_state
from ...deploy.convert import check_block_type
from ...models import RepBlockBase, reparameterize
from ...registry import HOOKS
from ...utils.errors import CheckpointError

#: What the hook may do with a deployed checkpoint for a training-time model.
DEPLOYED_ACTIONS = ('fold', 'error')


def _unfolded_blocks(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if isinstance(m, RepBlockBase) and not m.deploy)


def fold_structure(model: nn.Module) -> int:
    """Turn every RepVGG block of a model about to receive deployed weights into its plain form.

    The values folded are overwritten by the checkpoint right after; only the structure
    matters. The model's training/eval mode is kept.

    Returns:
        How many blocks were folded.
    """
    n = _unfolded_blocks(model)
    training = model.training
    reparameterize(model.eval())
    model.train(training)
    return n


@HOOKS.register_module()
class StrictLoadHook(Hook):
    """Make ``load_from`` strict, and recognize a deployed (folded) checkpoint.

    mmengine loads ``load_from`` non-strictly: a checkpoint that does not fit the model
    (a deployed one for a training-time model, another arch) only logs its unexpected keys
    and leaves the rest of the model at its random initialization. This hook checks the
    loaded state dict against the model before mmengine copies it
    (``after_load_checkpoint``) with :func:`mmrepvgg.checkpoint.check_state_dict`: every
    missing, unexpected or mis-shaped key is an error.

    A checkpoint with ``branch_reparam`` keys holds a deployed model. If the model is a
    training-time one, ``deployed='fold'`` (``tools/test.py``) folds the model's blocks (and
    an ``EMAHook``'s copy) before loading, so the deployed model is tested, as with
    ``model.backbone.deploy=True``, and says so in the log; ``deployed='error'``
    (``tools/train.py``'s ``load_from``) stops: RepVGG trains the multi-branch model.

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
        if is_deployed_state(state) and _unfolded_blocks(model):
            if self.deployed == 'error':
                raise CheckpointError(
                    f'load_from {source} holds a deployed (folded) model (branch_reparam '
                    'keys); RepVGG trains the multi-branch model: load the training-time '
                    'checkpoint (iter_N.pth, not iter_N_deploy.pth)')
            n = fold_structure(model)
            for hook in runner.hooks:  # EMAHook copies the checkpoint into its model next
                if hasattr(hook, 'ema_model'):
                    fold_structure(hook.ema_model.module)
            print_log(f'{source} holds a deployed model (branch_reparam keys): folded the '
                      f'{n} RepVGG blocks of the model before loading it, so the deployed '
                      'model is what runs (as with --cfg-options model.backbone.deploy=True)',
                      logger='current')
        check_state_dict(model, state, source=str(source))

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
