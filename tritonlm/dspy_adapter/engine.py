"""A DSPy 3.4 engine (``dspy.LM(model, engine=..., async_engine=...)``) backed by one tritonlm LLM.

DSPy's LM layer owns caching, retries, history and candidate fan-out; an engine turns one
``dspy.lm15.Request`` into one ``dspy.lm15.Response`` (``complete``) or into lm15 stream events
(``stream``). Both engines of a pair share one :class:`~tritonlm.runtime.llm.LLM`, whose
background loop batches every request in flight, whichever thread or event loop sent it.

Candidate batching: DSPy asks a custom engine for ``n`` candidates as ``n`` sequential
``complete`` calls on the same Request object. :class:`~tritonlm.dspy_adapter.language_model.TritonLM`
announces ``n`` through :data:`CANDIDATE_GROUP`; on the first of those calls the engine
generates all ``n`` completions as one request (one batch, one prefill) and hands the rest out
on the following calls. The prompt's tokens are reported once, on candidate 0, so summed usage
equals what the engine computed.
"""

from __future__ import annotations

import contextvars
import dataclasses
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from dspy.clients.engines.base import validate_request
from dspy.lm15 import (
    InvalidRequestError,
    Message,
    Request,
    Response,
    ServerError,
    StreamDeltaEvent,
    StreamEndEvent,
    StreamStartEvent,
    TextDelta,
    TextPart,
    UnsupportedFeatureError,
    Usage,
)

from tritonlm.errors import ConfigError, SchemaError, TritonLMError
from tritonlm.runtime.llm import LLM, AsyncLLM
from tritonlm.runtime.openai_params import sampling_params_from_openai
from tritonlm.runtime.outputs import CompletionOutput, RequestOutput
from tritonlm.runtime.sampling_params import SamplingParams

# Used when a request carries no max_tokens (dspy.LM(max_tokens=None)).
DEFAULT_MAX_TOKENS = 512
SUPPORTED_PARAMS = frozenset(
    {"temperature", "max_tokens", "top_p", "top_k", "stop", "seed", "response_format", "n", "stream"}
)


@dataclass
class CandidateGroup:
    """The ``n`` of one public LM call, and the candidates generated ahead for it."""

    n: int
    request: Request | None = None
    pending: list[Response] = field(default_factory=list)


CANDIDATE_GROUP: contextvars.ContextVar[CandidateGroup | None] = contextvars.ContextVar(
    "tritonlm_dspy_candidate_group", default=None
)


def _message_text(message: Message) -> str:
    texts = []
    for part in message.parts:
        if not isinstance(part, TextPart):
            raise UnsupportedFeatureError(f"tritonlm takes text messages only, got a {part.type!r} part")
        texts.append(part.text)
    return "".join(texts)


def request_messages(request: Request) -> list[dict[str, str]]:
    """The chat messages of ``request`` (system first), for the model's chat template."""
    messages: list[dict[str, str]] = []
    if request.system is not None:
        system = (
            request.system
            if isinstance(request.system, str)
            else "".join(getattr(part, "text", "") for part in request.system)
        )
        messages.append({"role": "system", "content": system})
    for message in request.messages:
        if message.role not in ("user", "assistant", "system"):
            raise UnsupportedFeatureError(f"tritonlm has no {message.role!r} messages")
        messages.append({"role": message.role, "content": _message_text(message)})
    return messages


def _refuse_unsupported(request: Request) -> None:
    """Settings tritonlm's DSPy engine cannot honour raise instead of being dropped."""
    if request.tools:
        raise UnsupportedFeatureError("tritonlm's DSPy engine has no native tool calling")
    config = request.config
    unsupported = {
        "tool_choice": config.tool_choice,
        "reasoning": config.reasoning,
        "logprobs": config.logprobs,
        "frequency_penalty": config.frequency_penalty,
        "presence_penalty": config.presence_penalty,
        "extensions": config.extensions or None,
    }
    present = sorted(name for name, value in unsupported.items() if value is not None)
    if present:
        raise UnsupportedFeatureError(f"tritonlm's DSPy engine does not support {present}")


def sampling_params(request: Request, n: int = 1) -> SamplingParams:
    """``request.config`` as SamplingParams (through the runtime's OpenAI translator: lm15's
    config uses the OpenAI spellings); settings tritonlm cannot honour are refused."""
    _refuse_unsupported(request)
    config = request.config
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    try:
        return sampling_params_from_openai({**fields, "n": n}, default_max_tokens=DEFAULT_MAX_TOKENS)
    except ConfigError as exc:
        raise InvalidRequestError(str(exc)) from exc


def lm15_error(error: BaseException) -> Exception:
    """The dspy.lm15 error DSPy expects for a tritonlm failure (bad requests are not retried)."""
    if isinstance(error, (ConfigError, SchemaError)):
        return InvalidRequestError(str(error))
    if isinstance(error, TritonLMError):
        return ServerError(str(error))
    return ServerError(repr(error))


def _raise_for_error(output: RequestOutput) -> None:
    if output.error is not None:
        raise lm15_error(output.error) from output.error


def _finish_reason(completion: CompletionOutput) -> str:
    if completion.finish_reason == "length":
        return "length"
    if completion.finish_reason in ("abort", "error"):
        return "error"
    return "stop"


def _usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> Usage:
    return Usage(
        input_tokens=prompt_tokens,
        output_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        cache_read_tokens=cached_tokens,
    )


def responses_from_output(output: RequestOutput, model: str) -> list[Response]:
    """One Response per completion; the prompt is counted on the first one only."""
    _raise_for_error(output)
    responses = []
    for completion in output.outputs:
        first = completion.index == 0
        usage = _usage(
            output.usage.prompt_tokens if first else 0,
            len(completion.token_ids),
            output.usage.cached_prompt_tokens if first else 0,
        )
        responses.append(
            Response(
                id=f"{output.request_id}-{completion.index}",
                model=model,
                message=Message.assistant([TextPart(completion.text)]),
                finish_reason=_finish_reason(completion),
                usage=usage,
            )
        )
    return responses


def _candidate_group() -> CandidateGroup | None:
    group = CANDIDATE_GROUP.get()
    if group is None or group.n <= 1:
        return None
    return group


class _EngineBase:
    # Capability hints DSPy reads from a custom engine (dspy.clients.capabilities).
    supports_response_schema = True
    supports_function_calling = False
    supports_reasoning = False
    supported_params = SUPPORTED_PARAMS

    def __init__(self, llm: LLM, model: str = "tritonlm", *, owns_llm: bool = False) -> None:
        self.llm = llm
        self.model = model
        self.owns_llm = owns_llm
        self._lock = threading.Lock()
        self._num_requests = 0

    def _count(self) -> None:
        with self._lock:
            self._num_requests += 1

    @property
    def num_requests(self) -> int:
        """Generation requests sent to the LLM (cache hits and buffered candidates excluded)."""
        return self._num_requests

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        # DSPy deep-copies programs (and any LM set on a predictor); the model is shared.
        return self


class TritonEngine(_EngineBase):
    """The synchronous engine: ``complete(Request) -> Response``, ``stream``, ``close``."""

    def complete(self, request: Request) -> Response:
        validate_request(request)
        group = _candidate_group()
        if group is not None and group.request is request and group.pending:
            return group.pending.pop(0)
        n = group.n if group is not None else 1
        params = sampling_params(request, n)
        self._count()
        (output,) = self.llm.generate([request_messages(request)], params)
        responses = responses_from_output(output, self.model)
        if group is not None:
            group.request, group.pending = request, responses[1:]
        return responses[0]

    def stream(self, request: Request) -> Iterator[Any]:
        validate_request(request)
        params = sampling_params(request)
        messages = request_messages(request)
        self._count()
        text_stream = self.llm.stream(messages, params)
        try:
            yield StreamStartEvent(id=text_stream.request_id, model=self.model)
            for text in text_stream:
                yield StreamDeltaEvent(delta=TextDelta(text=text))
        except TritonLMError as exc:
            raise lm15_error(exc) from exc
        finally:
            text_stream.close()
        assert text_stream.output is not None
        (response,) = responses_from_output(text_stream.output, self.model)[:1]
        yield StreamEndEvent(finish_reason=response.finish_reason, usage=response.usage)

    def close(self) -> None:
        """Closes the LLM if this engine loaded it; a borrowed LLM stays open."""
        if self.owns_llm:
            self.llm.close()


class AsyncTritonEngine(_EngineBase):
    """The async twin: ``await complete(Request)``, ``async for event in stream(Request)``,
    ``await aclose()``. Requests from any number of tasks join the shared LLM's batches."""

    def __init__(self, llm: LLM, model: str = "tritonlm", *, owns_llm: bool = False) -> None:
        super().__init__(llm, model, owns_llm=owns_llm)
        self.async_llm = AsyncLLM.from_llm(llm)

    async def complete(self, request: Request) -> Response:
        validate_request(request)
        group = _candidate_group()
        if group is not None and group.request is request and group.pending:
            return group.pending.pop(0)
        n = group.n if group is not None else 1
        params = sampling_params(request, n)
        self._count()
        output = await self.async_llm.complete(request_messages(request), params)
        responses = responses_from_output(output, self.model)
        if group is not None:
            group.request, group.pending = request, responses[1:]
        return responses[0]

    async def stream(self, request: Request) -> AsyncIterator[Any]:
        validate_request(request)
        params = sampling_params(request)
        messages = request_messages(request)
        self._count()
        started = False
        output = None
        async for delta in self.async_llm.generate(messages, params):
            if not started:
                yield StreamStartEvent(id=delta.request_id, model=self.model)
                started = True
            if delta.index == 0 and delta.text:
                yield StreamDeltaEvent(delta=TextDelta(text=delta.text))
            if delta.finished:
                output = delta.output
        assert output is not None
        (response,) = responses_from_output(output, self.model)[:1]
        yield StreamEndEvent(finish_reason=response.finish_reason, usage=response.usage)

    async def aclose(self) -> None:
        if self.owns_llm:
            self.llm.close()


def engine_pair(llm: LLM, model: str = "tritonlm", *, owns_llm: bool = False) -> tuple[TritonEngine, AsyncTritonEngine]:
    """A sync and an async engine over the same LLM (one batch for both)."""
    return TritonEngine(llm, model, owns_llm=owns_llm), AsyncTritonEngine(llm, model, owns_llm=owns_llm)


__all__ = [
    "CANDIDATE_GROUP",
    "AsyncTritonEngine",
    "CandidateGroup",
    "TritonEngine",
    "engine_pair",
    "request_messages",
    "responses_from_output",
    "sampling_params",
]
