"""Integration tests run on a local Ray with logical GPUs, started once per module."""

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_gpus=1, num_cpus=2, namespace="selfheal", include_dashboard=False,
             log_to_driver=False, address="local")
    yield
    ray.shutdown()
