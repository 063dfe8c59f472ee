"""Install ``simple_knn``: exact nearest-neighbour distances in pure PyTorch (no build step).

torch is not listed as a requirement so that pip never replaces the torch build chosen for the
machine; install torch first.
"""
from setuptools import setup

setup(
    name="simple-knn",
    version="0.1.0",
    description="distCUDA2 (mean squared distance to the 3 nearest points) for STGA, in PyTorch",
    packages=["simple_knn"],
    python_requires=">=3.8",
    zip_safe=False,
)
