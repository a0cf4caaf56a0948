"""Quantized weights end to end: GGUF blocks decoded exactly, lossless fusing, the lean GGUF
reader against gguf-py, quantized models against their dequantized twins, RTN quantization."""

from __future__ import annotations

import zlib

import gguf
import numpy as np
import pytest
import torch

from tests.model.gguf_support import Q, write_tiny_gguf
from tests.model.simple import ContiguousSequence
from tritonlm.errors import ConfigError, ModelLoadError
from tritonlm.kernels import get_ops
from tritonlm.kernels.qweight import QuantizedWeight, concat_rows, pack_int4, promote, quantize_rtn
from tritonlm.model.gguf import GGUFFile
from tritonlm.model.gguf_quant import BLOCK_LAYOUT, decode_blocks
from tritonlm.model.gguf_reader import GGUFReader
from tritonlm.model.loader import load_model

# which bytes of each block hold f16 scales (kept finite in random blocks)
F16_FIELDS = {"Q8_0": [0], "Q5_0": [0], "Q4_0": [0], "Q5_1": [0, 2], "Q4_1": [0, 2], "Q4_K": [0, 2], "Q5_K": [0, 2]}
F16_FIELDS["Q6_K"] = [208]


def random_blocks(type_name: str, rows: int, cols: int, seed: int) -> np.ndarray:
    elems, nbytes = BLOCK_LAYOUT[type_name]
    raw = np.random.default_rng(seed).integers(0, 256, size=(rows, cols // elems, nbytes), dtype=np.uint8)
    for at in F16_FIELDS[type_name]:
        raw[..., at + 1] &= 0x3B  # exponent below the maximum: finite scales
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("type_name", sorted(BLOCK_LAYOUT))
@pytest.mark.parametrize("rows_per_chunk", [1, 3, 4096])
def test_decoded_blocks_equal_gguf_dequantization_bitwise(type_name: str, rows_per_chunk: int) -> None:
    rows, cols = 7, 768
    seed = zlib.crc32(f"{type_name}/{rows_per_chunk}".encode()) % 1000  # the same in every process
    raw = random_blocks(type_name, rows, cols, seed=seed)
    w = decode_blocks(type_name, lambda a, b: raw[a:b], (rows, cols), rows_per_chunk=rows_per_chunk)
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[type_name]).reshape(rows, cols)
    np.testing.assert_array_equal(w.dequantize(torch.float32).numpy(), ref)
    # the integer values fit the stored width: 4-bit types unsigned nibbles, the others int8
    values = w.int_values()
    assert (w.bits == 4) == type_name.startswith("Q4")
    assert int(values.min()) >= (0 if w.bits == 4 else -128) and int(values.max()) <= (15 if w.bits == 4 else 127)


def _random_quantized(n: int, k: int, bits: int, group: int, offsets: bool, seed: int) -> QuantizedWeight:
    gen = torch.Generator().manual_seed(seed)
    if bits == 8:
        q = torch.randint(-128, 128, (n, k), generator=gen).to(torch.int8)
    else:
        q = pack_int4(torch.randint(0, 16, (n, k), generator=gen))
    scales = torch.rand(n, k // group, generator=gen) * 0.1
    off = torch.randn(n, k // group, generator=gen) * 0.05 if offsets else None
    return QuantizedWeight(q, scales, off, bits, group)


def test_concat_rows_promotes_losslessly() -> None:
    parts = [
        _random_quantized(5, 64, 4, 32, True, 1),
        _random_quantized(3, 64, 8, 16, False, 2),
        _random_quantized(6, 64, 8, 32, False, 3),
    ]
    fused = concat_rows(parts)
    assert (fused.bits, fused.group_size, fused.offsets is not None) == (8, 16, True)
    torch.testing.assert_close(fused.dequantize(), torch.cat([p.dequantize() for p in parts]), rtol=0, atol=0)
    same = [_random_quantized(4, 64, 4, 32, True, s) for s in (4, 5)]
    assert concat_rows(same).bits == 4
    with pytest.raises(ConfigError):
        promote(parts[1], bits=4, group_size=16, with_offsets=False)


@pytest.mark.parametrize("bits", [4, 8])
def test_rtn_quantization_error_is_within_half_a_step(bits: int) -> None:
    gen = torch.Generator().manual_seed(bits)
    w = torch.randn(37, 96, generator=gen, dtype=torch.float64).float()
    q = quantize_rtn(w, bits, 32)
    err = (q.dequantize(torch.float64) - w.double()).abs().reshape(37, 3, 32)
    step = q.scales.double().unsqueeze(-1)
    assert bool((err <= step / 2 * (1 + 1e-5) + 1e-7).all())
    if bits == 4:  # each group's extremes are exact
        groups = w.double().reshape(37, 3, 32)
        deq = q.dequantize(torch.float64).reshape(37, 3, 32)
        torch.testing.assert_close(deq.amin(-1), groups.amin(-1), rtol=0, atol=1e-6)


MIXED = {
    "attn_q.weight": Q.Q8_0,
    "attn_k.weight": Q.Q4_0,
    "attn_v.weight": Q.Q5_1,
    "attn_output.weight": Q.Q4_1,
    "ffn_gate.weight": Q.Q5_0,
    "ffn_up.weight": Q.Q8_0,
    "ffn_down.weight": Q.Q5_0,
    "token_embd.weight": Q.Q8_0,
    "output.weight": Q.Q4_0,
}


@pytest.fixture
def mixed_gguf(tmp_path):
    path = tmp_path / "mixed.gguf"
    write_tiny_gguf(path, qtypes=MIXED, seed=11)
    return path


def test_lean_reader_matches_gguf_py(mixed_gguf) -> None:
    ours = GGUFReader(mixed_gguf)
    theirs = gguf.GGUFReader(str(mixed_gguf))
    assert set(ours.tensors) == {t.name for t in theirs.tensors}
    for t in theirs.tensors:
        info = ours.tensors[t.name]
        assert info.type_id == int(t.tensor_type) and info.shape == tuple(int(d) for d in t.shape)
        assert info.offset == int(t.data_offset) and info.n_bytes == int(t.n_bytes)
        np.testing.assert_array_equal(ours.read_rows(t.name).reshape(-1), np.asarray(t.data).view(np.uint8).reshape(-1))
        np.testing.assert_array_equal(ours.read_rows(t.name, 1, 3), ours.read_rows(t.name)[1:3])
    for key, field in theirs.fields.items():
        if key.startswith("GGUF."):
            continue
        value = ours.metadata[key]
        if field.types and field.types[0] == gguf.GGUFValueType.ARRAY and field.types[-1] == gguf.GGUFValueType.STRING:
            assert value == [bytes(field.parts[i]).decode() for i in field.data], key
        else:
            expected = field.contents()
            assert value == pytest.approx(expected) if isinstance(expected, float) else value == expected, key


def test_quantized_model_holds_no_float_copy_and_equals_its_dequantized_twin(mixed_gguf) -> None:
    quantized = load_model(str(mixed_gguf), dtype="float32", backend="torch")
    dense = load_model(str(mixed_gguf), dtype="float32", backend="torch", quantization=None)
    model = quantized.model
    assert model.quantized and isinstance(model.embed_tokens, QuantizedWeight)
    for lw in model.layers:
        for w in (lw.qkv_weight, lw.o_weight, lw.gate_up_weight, lw.down_weight):
            assert not isinstance(w, torch.Tensor)
    assert not isinstance(model.lm_head, torch.Tensor)
    assert model._packed is None  # no oneDNN float packs for a quantized model
    ids = [5, 260, 17, 99, 3, 298, 41]
    got = ContiguousSequence(model, 16).step(ids)
    ref = ContiguousSequence(dense.model, 16).step(ids)
    # the CPU kernel quantizes activations to int8 per block of 32 (as llama.cpp does)
    assert (got - ref).abs().max().item() <= 0.05 * ref.abs().max().item()
    assert int(got[-1].argmax()) == int(ref[-1].argmax())


def test_reference_ops_give_exactly_the_dequantized_model(mixed_gguf) -> None:
    from dataclasses import replace

    from tritonlm.kernels import reference

    ops = replace(get_ops("torch"), quant_linear=reference.quant_linear, pack_quant_weight=reference.pack_quant_weight)
    quantized = load_model(str(mixed_gguf), dtype="float32", ops=ops)
    dense = load_model(str(mixed_gguf), dtype="float32", quantization=None)
    ids = [7, 8, 200, 31, 2]
    torch.testing.assert_close(
        ContiguousSequence(quantized.model, 16).step(ids), ContiguousSequence(dense.model, 16).step(ids), rtol=0, atol=0
    )


@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_quantize_a_float_folder_at_load(mixed_gguf, tmp_path, quantization: str) -> None:
    from tritonlm.model.gguf import convert_gguf

    folder = convert_gguf(mixed_gguf, tmp_path / "hf")
    dense = load_model(str(folder), dtype="float32")
    assert not dense.model.quantized
    quantized = load_model(str(folder), dtype="float32", quantization=quantization)
    assert quantized.model.quantized
    ids = [9, 10, 11, 250, 3]
    got = ContiguousSequence(quantized.model, 16).step(ids)
    ref = ContiguousSequence(dense.model, 16).step(ids)
    bound = 0.05 if quantization == "int8" else 0.5
    assert (got - ref).abs().max().item() <= bound * ref.abs().max().item()


def test_quantization_option_errors(mixed_gguf, tmp_path) -> None:
    with pytest.raises(ConfigError):
        load_model(str(mixed_gguf), quantization="int3")
    folder = tmp_path / "nofolder"
    folder.mkdir()
    with pytest.raises((ConfigError, ModelLoadError)):
        load_model(str(folder), quantization="gguf")


def test_quantized_state_dict_refuses(mixed_gguf) -> None:
    model = load_model(str(mixed_gguf), dtype="float32").model
    with pytest.raises(ModelLoadError):
        model.state_dict()


@pytest.mark.slow
def test_default_gguf_matrices_decode_exactly(default_gguf_path) -> None:
    """Every matrix of the default model (Q5_0, Q8_0, Q4_K, Q6_K) decodes to gguf-py's values."""
    src = GGUFFile(default_gguf_path)
    seen = set()
    for name, info in src.tensors.items():
        type_name = gguf.GGMLQuantizationType(info.type_id).name
        if len(info.shape) != 2 or type_name in seen or name == "token_embd.weight":
            continue
        seen.add(type_name)
        w = src.quantized(name)
        np.testing.assert_array_equal(w.dequantize(torch.float32).numpy(), src.dequantize(name))
    assert seen >= {"Q5_0", "Q8_0", "Q4_K", "Q6_K"}


def test_triton_quantized_gemm_runs_the_quantized_model(mixed_gguf) -> None:
    """Every quantized matmul of the model through the Triton kernel (interpreted on the CPU;
    compiled on CUDA with TRITON_INTERPRET=0), the other ops from torch (the tiny model's
    head_dim 16 is below the Triton attention kernels'), against the exact dequantized path."""
    from dataclasses import replace

    from tritonlm.config import env
    from tritonlm.kernels import quant_matmul, reference

    device = "cpu" if env().triton_interpret else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs TRITON_INTERPRET=1 or a CUDA device")
    torch_ops = get_ops("torch")
    exact = replace(torch_ops, quant_linear=reference.quant_linear, pack_quant_weight=reference.pack_quant_weight)
    triton = replace(
        torch_ops, quant_linear=quant_matmul.quant_linear, pack_quant_weight=quant_matmul.pack_quant_weight
    )
    ref = load_model(str(mixed_gguf), dtype="float32", ops=exact)
    got = load_model(str(mixed_gguf), dtype="float32", ops=triton, device=device)
    assert got.model.quantized and not isinstance(got.model.layers[0].qkv_weight, torch.Tensor)
    ids = [7, 8, 200, 31, 2, 77, 150, 9, 4, 5, 6, 18, 19, 20, 21, 22, 23]
    a = ContiguousSequence(got.model, 32).step(ids).cpu()
    b = ContiguousSequence(ref.model, 32).step(ids)
    assert (a - b).abs().max().item() <= 1e-4 * b.abs().max().item()


def test_gpu_check_skips_cleanly_without_a_gpu() -> None:
    import subprocess
    import sys
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: make gpu-check runs for real")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "benches/gpu_check.py"], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "skipped" in proc.stdout, proc.stdout + proc.stderr
