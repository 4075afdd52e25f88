"""Stand-in for mmcv._ext (mmcv-lite has no compiled ops): every op raises when called.

tools/gpu/benchmark.sh copies it to mmcv/_ext.py of an mmcv-lite installed in a scratch
folder on a GPU machine, because mmseg 1.2.2 imports mmcv.ops at import time; the models
benchmarked here use no mmcv op. Never install it over a real mmcv.
"""


def __getattr__(name):
    if name.startswith('__'):
        raise AttributeError(name)

    def missing(*args, **kwargs):
        raise RuntimeError(f'mmcv op {name!r} is not compiled in this install (mmcv-lite)')

    missing.__name__ = name
    return missing
