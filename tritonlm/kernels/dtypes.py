"""The float dtypes tritonlm computes in, as torch dtypes.

The names live in :data:`tritonlm.config.FLOAT_DTYPE_NAMES` (torch-free, so configuration and the
command line validate them without importing torch); this module is the one place that maps them
to torch dtypes. Kernels check their inputs against :data:`FLOAT_DTYPES`; the loader and the
converter resolve a user's ``dtype`` with :func:`resolve_dtype`.
"""

from __future__ import annotations

import torch

from tritonlm.config import FLOAT_DTYPE_NAMES
from tritonlm.errors import ConfigError

TORCH_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in FLOAT_DTYPE_NAMES}
FLOAT_DTYPES: tuple[torch.dtype, ...] = tuple(TORCH_DTYPES.values())


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``dtype`` (a name of :data:`TORCH_DTYPES` or one of its torch dtypes) as a torch dtype;
    ConfigError naming the accepted names for anything else."""
    if isinstance(dtype, torch.dtype):
        if dtype not in FLOAT_DTYPES:
            raise ConfigError(f"dtype={dtype}: expected one of {FLOAT_DTYPE_NAMES}")
        return dtype
    if dtype not in TORCH_DTYPES:
        raise ConfigError(f"dtype={dtype!r}: expected one of {FLOAT_DTYPE_NAMES}")
    return TORCH_DTYPES[dtype]


__all__ = ["FLOAT_DTYPES", "TORCH_DTYPES", "resolve_dtype"]
