"""mmrepvgg: RepVGG backbone, structural re-parameterization and deploy tools for OpenMMLab.

Exact pins live in requirements/*.txt (used by the Makefile); install_requires states the
compatible ranges so that mmrepvgg can join an existing OpenMMLab environment.
"""
from pathlib import Path

from setuptools import find_packages, setup


def version() -> str:
    scope: dict = {}
    exec(Path('mmrepvgg/version.py').read_text(), scope)
    return scope['__version__']


setup(
    name='mmrepvgg',
    version=version(),
    description='RepVGG (CVPR 2021) for OpenMMLab: backbone, re-parameterization, deploy',
    long_description=Path('README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.9',
    packages=find_packages(include=['mmrepvgg', 'mmrepvgg.*']),
    install_requires=[
        'torch>=2.0',
        'mmengine>=0.10.0,<1.0.0',
        'mmcv>=2.0.0,<2.2.0',
        'mmsegmentation>=1.2.0,<1.3.0',
        'mmpretrain>=1.2.0,<1.3.0',
        'ftfy',
        'regex',
        'matplotlib',
        'tqdm',
        'pillow',
    ],
    extras_require={
        'tests': ['pytest', 'timm>=1.0', 'scikit-learn', 'cityscapesscripts'],
        'benchmark': ['onnxruntime'],
    },
    zip_safe=False,
)
