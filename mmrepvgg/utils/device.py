"""What numbers were measured on (the int8 report records it)."""
from __future__ import annotations

import os
import platform

import torch


def device_info(device: str | torch.device = 'cpu') -> dict:
    """What the numbers were measured on: CPU model, threads, GPU and library versions.

    Args:
        device: The device the numbers come from.
    """
    device = torch.device(device)
    cpu = platform.processor() or ''
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((line.split(':', 1)[1].strip() for line in f
                        if line.startswith('model name')), cpu)
    except OSError:
        pass
    info = dict(device=str(device), cpu=cpu, cpu_count=os.cpu_count(),
                torch_threads=torch.get_num_threads(), torch=torch.__version__,
                python=platform.python_version(), platform=platform.platform(),
                mkldnn=torch.backends.mkldnn.is_available())
    if device.type == 'cuda':
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info
