"""Command line: ``tritonlm generate``, ``tritonlm convert`` (also ``python -m tritonlm``)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from tritonlm.errors import TritonLMError


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="stream a completion of PROMPT to stdout")
    p.add_argument("prompt", help="the prompt ('-' reads standard input)")
    p.add_argument("--model", default="default", help="'default', a HF folder, a .gguf file or a hub id")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default=None, choices=("torch", "triton", "interpret"))
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--chat",
        dest="chat",
        action="store_true",
        default=True,
        help="wrap the prompt in the model's chat template (default)",
    )
    mode.add_argument("--raw", dest="chat", action="store_false", help="send the prompt as raw text")


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a .gguf file to a HF-layout safetensors folder")
    p.add_argument("gguf", help="input .gguf file")
    p.add_argument("out", help="output folder")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tritonlm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_convert(sub)
    return parser


def _generate(args: argparse.Namespace) -> int:
    from tritonlm import LLM, SamplingParams

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
    )
    llm = LLM(model=args.model, dtype=args.dtype, device=args.device, backend=args.backend)
    request = [{"role": "user", "content": prompt}] if args.chat else prompt
    start = time.perf_counter()
    final = None
    for delta in llm.stream(request, params):
        sys.stdout.write(delta.text)
        sys.stdout.flush()
        final = delta
    elapsed = time.perf_counter() - start
    sys.stdout.write("\n")
    if final is not None:
        n_prompt, n_completion = final.prompt_tokens, final.completion_tokens
        rate = n_completion / elapsed if elapsed > 0 else 0.0
        print(
            f"[prompt tokens: {n_prompt}, completion tokens: {n_completion}, {rate:.1f} tokens/s]",
            file=sys.stderr,
        )
    llm.close()
    return 0


def _convert(args: argparse.Namespace) -> int:
    from tritonlm.model.loader import convert_gguf

    out = convert_gguf(args.gguf, args.out, dtype=args.dtype)
    print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return _generate(args)
        return _convert(args)
    except TritonLMError as exc:
        print(f"tritonlm: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
