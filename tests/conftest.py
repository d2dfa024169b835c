import os

import torch

# The interpreter flag is read when a Triton kernel is decorated: set it before crossfuse.kernels loads.
# With a GPU the Triton kernels run compiled on CUDA tensors instead.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from crossfuse import _backend  # noqa: E402

HAS_GPU = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: none on this machine (run benchmarks/gpu_check.sh on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _numerics_and_nan_outputs():
    """TF32 off, fixed seed, and every output crossfuse allocates starts NaN-filled."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    _backend.FILL_NAN = True
    yield
    _backend.FILL_NAN = False
