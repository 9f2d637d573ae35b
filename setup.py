"""ntk_zoo: fast finite-width empirical NTKs in JAX, and a model zoo to compute them on."""

import pathlib

from setuptools import find_packages, setup

here = pathlib.Path(__file__).parent
install_requires = [
    line.strip() for line in (here / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="ntk_zoo",
    version="0.1.0",
    description="Fast finite-width empirical neural tangent kernels in JAX, and a model zoo.",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["ntk_zoo", "ntk_zoo.*"]),
    package_data={"ntk_zoo": ["py.typed"]},
    python_requires=">=3.11",
    install_requires=install_requires,
    entry_points={"console_scripts": ["ntk-zoo = ntk_zoo.cli:main"]},
    extras_require={
        "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "hypothesis==6.170.17",
                 "torch==2.13.0", "ruff==0.17.5", "mypy==2.4.1",
                 "tensorflow-datasets==4.9.10"],
        "data": ["tensorflow-datasets==4.9.10"],
    },
)
