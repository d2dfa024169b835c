"""crossfuse: fused Triton and C++/CUDA kernels for cross-modal deep learning, as drop-in PyTorch layers."""
__version__ = "0.1.0"

from crossfuse._backend import BACKENDS, use_backend  # noqa: E402
from crossfuse import nn, ops, reference  # noqa: E402

__all__ = ["BACKENDS", "use_backend", "nn", "ops", "reference", "__version__"]
