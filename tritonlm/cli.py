"""Command line: ``tritonlm generate``, ``tritonlm serve``, ``tritonlm convert`` (also ``python -m tritonlm``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from tritonlm.config import BACKENDS, DTYPES, FLOAT_DTYPE_NAMES, env
from tritonlm.errors import TritonLMError

# `serve` flag -> RequestLimits field; a flag left out keeps the engine's default
_LIMIT_FLAGS = {
    "max_n": "max_n",
    "max_request_tokens": "max_request_tokens",
    "compile_time_budget": "compile_time_budget_s",
    "compile_size_budget": "compile_size_budget",
    "mask_time_budget": "mask_time_budget_s",
    "grammar_cache_bytes": "grammar_cache_bytes",
}


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quantization",
        default="auto",
        choices=("auto", "gguf", "int8", "int4", "none"),
        help="auto: a .gguf keeps its quantized weights, a HF folder loads dense; int8/int4: quantize at load; "
        "none: dense weights",
    )
    p.add_argument(
        "--deterministic", action="store_true", help="batch-invariant numerics: outputs independent of other requests"
    )


def _model_options(args: argparse.Namespace) -> dict:
    return {
        "quantization": None if args.quantization == "none" else args.quantization,
        "deterministic": args.deterministic,
    }


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="stream a completion of PROMPT to stdout")
    p.add_argument("prompt", help="the prompt ('-' reads standard input)")
    p.add_argument("--model", default="default", help="'default', a HF folder, a .gguf file or a hub id")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="activation dtype (auto: float32 for quantized weights on the CPU, else bfloat16)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default=None, choices=BACKENDS)
    _add_model_options(p)
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
    p.add_argument("--dtype", default="float32", choices=FLOAT_DTYPE_NAMES)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the OpenAI HTTP API (needs the 'serve' extra)")
    p.add_argument("--model", default="default", help="'default', a HF folder, a .gguf file or a hub id")
    p.add_argument("--served-model-name", default=None, help="the model id clients send (default: --model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="activation dtype (auto: float32 for quantized weights on the CPU, else bfloat16)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default=None, choices=BACKENDS)
    _add_model_options(p)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--log-level", default="info")
    access = p.add_argument_group("access")
    access.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on /v1/* (default: $TRITONLM_API_KEY, else no key; "
        "prefer the variable, a flag shows in the process list)",
    )
    access.add_argument(
        "--allowed-hosts",
        default=None,
        help="comma-separated Host header values to answer (names or name:port); others get 400 (default: any)",
    )
    access.add_argument(
        "--max-request-bytes", type=int, default=None, help="largest request body accepted, else 413 (default: 4 MiB)"
    )
    limits = p.add_argument_group("per-request limits (default: the engine's RequestLimits)")
    limits.add_argument("--max-n", type=int, default=None, help="most completions one request may ask for (n)")
    limits.add_argument("--max-request-tokens", type=int, default=None, help="most n * max_tokens of one request")
    limits.add_argument(
        "--compile-time-budget", type=float, default=None, help="seconds one response_format grammar may compile"
    )
    limits.add_argument(
        "--compile-size-budget", type=int, default=None, help="automaton states and alternatives of one compile"
    )
    limits.add_argument(
        "--mask-time-budget", type=float, default=None, help="seconds one grammar state's token mask may take"
    )
    limits.add_argument("--grammar-cache-bytes", type=int, default=None, help="bytes of compiled grammars kept")


def _add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress of first-use steps on stderr (as TRITONLM_QUIET=1); warnings still show",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tritonlm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_convert(sub)
    _add_serve(sub)
    for p in sub.choices.values():
        _add_quiet(p)
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
    llm = LLM(model=args.model, dtype=args.dtype, device=args.device, backend=args.backend, **_model_options(args))
    request = [{"role": "user", "content": prompt}] if args.chat else prompt
    try:
        stream = llm.stream(request, params)
        for delta in stream:
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        output = stream.output
        if output is not None:
            usage = output.usage
            rate = usage.decode_tokens_per_s or usage.tokens_per_s
            print(
                f"[prompt tokens: {usage.prompt_tokens}, completion tokens: {usage.completion_tokens}, "
                f"{rate:.1f} tokens/s]",
                file=sys.stderr,
            )
    finally:
        llm.close()
    return 0


def _convert(args: argparse.Namespace) -> int:
    from tritonlm.model.gguf import convert_gguf

    out = convert_gguf(args.gguf, args.out, dtype=args.dtype)
    print(f"wrote {out}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        from tritonlm.server import serve
        from tritonlm.server.guards import DEFAULT_MAX_REQUEST_BYTES, check_max_request_bytes, host_set
    except ImportError as exc:
        print(
            f"tritonlm: error: the server needs FastAPI and uvicorn: pip install 'tritonlm[serve]' ({exc})",
            file=sys.stderr,
        )
        return 2
    from tritonlm import LLM, RequestLimits

    # every option is checked before the model loads
    limits = RequestLimits(
        **{field: getattr(args, flag) for flag, field in _LIMIT_FLAGS.items() if getattr(args, flag) is not None}
    )
    allowed_hosts = host_set(args.allowed_hosts)
    max_request_bytes = check_max_request_bytes(
        DEFAULT_MAX_REQUEST_BYTES if args.max_request_bytes is None else args.max_request_bytes
    )
    llm = LLM(
        model=args.model,
        dtype=args.dtype,
        device=args.device,
        backend=args.backend,
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        limits=limits,
        **_model_options(args),
    )
    try:
        serve(
            llm,
            args.served_model_name or args.model,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            api_key=args.api_key or env().api_key,
            allowed_hosts=allowed_hosts,
            max_request_bytes=max_request_bytes,
        )
    finally:
        llm.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quiet:
        # tritonlm.config reads it; set here so the whole process (and its children) sees it
        os.environ["TRITONLM_QUIET"] = "1"
    # warnings (a fallback to a slower path, ...) go to stderr; stdout holds only the answer
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="tritonlm: %(levelname)s: %(message)s")
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "serve":
            return _serve(args)
        return _convert(args)
    except TritonLMError as exc:
        print(f"tritonlm: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
