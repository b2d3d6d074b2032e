"""The engine's record splice (workers/engine/_splice.c), the project's one C extension: everything else about the
package is in pyproject.toml. Installing needs a C compiler and Python's headers (README)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("workers.engine._splice", sources=["workers/engine/_splice.c"], extra_compile_args=["-O2", "-Wall"])
    ]
)
