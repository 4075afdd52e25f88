"""Peak inference memory (paper Fig. 3): what the CPU tracker counts, by hand."""
import torch
from torch import nn

from mmrepvgg import RepVGGBlock, reparameterize
from projects.benchmark.memory import peak_forward_memory


def test_counts_new_storages_only():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True),
                          nn.Flatten(), nn.Linear(8 * 100, 2)).eval()
    x = torch.randn(1, 3, 10, 10)
    mem = peak_forward_memory(lambda: model(x))
    # conv output (in-place ReLU and the flatten view reuse it) + the tiny FC output;
    # the weights (also the FC weight's transposed view) and the input are not counted
    assert mem['peak_bytes'] == 8 * 100 * 4 + 2 * 4
    assert mem['method'] == 'dispatch-tracked tensor storages'


def test_multi_branch_block_keeps_more_alive_than_plain():
    torch.manual_seed(0)
    block = RepVGGBlock(16, 16).eval()
    x = torch.randn(2, 16, 20, 20)
    size = x.numel() * 4
    train = peak_forward_memory(lambda: block(x))['peak_bytes']
    reparameterize(block)
    plain = peak_forward_memory(lambda: block(x))['peak_bytes']
    assert plain == size  # the conv output; the ReLU works in place
    assert train >= 3 * size  # branch outputs alive until the addition
