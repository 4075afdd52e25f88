"""``CPUDistributedHook``: two CPU processes end with the same, averaged BN statistics (issue 19,
item 8), before ``CheckpointHook`` saves."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def _worker(rank: int, out: str) -> None:
    # a file store: no port to race for and no store-server thread in rank 0, whose teardown
    # while rank 1 was still connected once aborted rank 0 (SIGABRT) on a loaded CI machine
    dist.init_process_group('gloo', init_method=f'file://{out}/store', rank=rank, world_size=2)
    try:
        from mmrepvgg.engine.hooks import CPUDistributedHook
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm1d(2))
        model[1].running_mean.fill_(rank + 1.0)  # rank 0: 1, rank 1: 2
        model[1].running_var.fill_(10.0 * (rank + 1))
        model[1].num_batches_tracked.fill_(7)

        class Runner:
            pass
        runner = Runner()
        runner.model = model
        CPUDistributedHook().after_train_iter(runner, 0)
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, f'{out}/{rank}.pth')
        dist.barrier()  # neither rank tears gloo down while the other still uses it
    finally:
        dist.destroy_process_group()


def test_two_processes_end_with_the_average(tmp_path):
    torch.set_num_threads(1)
    mp.spawn(_worker, args=(str(tmp_path), ), nprocs=2, join=True)
    a = torch.load(tmp_path / '0.pth', weights_only=True)
    b = torch.load(tmp_path / '1.pth', weights_only=True)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert torch.allclose(a['1.running_mean'], torch.full((4, ), 1.5))
    assert torch.allclose(a['1.running_var'], torch.full((4, ), 15.0))
    assert int(a['1.num_batches_tracked']) == 7


def test_hook_runs_before_the_checkpoint_is_saved():
    from mmengine.hooks import CheckpointHook
    from mmengine.runner import get_priority

    from mmrepvgg.engine.hooks import CPUDistributedHook
    assert get_priority(CPUDistributedHook.priority) < get_priority(CheckpointHook.priority)


def test_one_process_is_left_alone():
    from mmrepvgg.engine.hooks import average_bn_buffers
    model = nn.BatchNorm2d(3)
    model.running_mean.fill_(3.0)
    assert average_bn_buffers(model) == 0
    assert torch.equal(model.running_mean, torch.full((3, ), 3.0))
