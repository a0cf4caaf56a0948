"""The one dtype table: names in tritonlm.config, torch dtypes in tritonlm.kernels.dtypes."""

from __future__ import annotations

import pytest
import torch

from tritonlm.config import DTYPES, FLOAT_DTYPE_NAMES
from tritonlm.errors import ConfigError
from tritonlm.kernels.dtypes import FLOAT_DTYPES, TORCH_DTYPES, resolve_dtype


def test_names_and_torch_dtypes_agree() -> None:
    assert FLOAT_DTYPE_NAMES == ("float32", "bfloat16", "float16")
    assert DTYPES == ("auto", *FLOAT_DTYPE_NAMES)
    assert tuple(TORCH_DTYPES) == FLOAT_DTYPE_NAMES
    assert FLOAT_DTYPES == (torch.float32, torch.bfloat16, torch.float16)


@pytest.mark.parametrize("name", FLOAT_DTYPE_NAMES)
def test_resolve_by_name_and_by_dtype(name: str) -> None:
    dtype = getattr(torch, name)
    assert resolve_dtype(name) is dtype
    assert resolve_dtype(dtype) is dtype


@pytest.mark.parametrize("bad", ["auto", "fp16", "int8", torch.int8, torch.float64])
def test_resolve_rejects_the_rest(bad: str | torch.dtype) -> None:
    with pytest.raises(ConfigError, match="expected one of"):
        resolve_dtype(bad)
