"""The one compiled piece: gru-copy's serving step in C (model_store/_copy_kernel.c).

Optional: where no C compiler is found (a slim image's build stage) the package installs
without it and model_store.copy_step runs the same step with torch (`copy_step.KERNEL` says
which). Everything else is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "model_store._copy_kernel",
            ["model_store/_copy_kernel.c"],
            extra_compile_args=["-O3", "-std=c11", "-fno-strict-aliasing"],
            optional=True,
        )
    ]
)
