"""``TritonLM``: a ``dspy.LM`` whose engines are tritonlm's, and the one-line constructor ``lm``.

``TritonLM`` is ``dspy.LM`` with a custom engine pair; DSPy's own ``__call__``/``acall`` path
(cache, retries, history, usage tracking, callbacks) is untouched. The only addition: a call
with ``n > 1`` announces ``n`` to the engine (see ``engine.CANDIDATE_GROUP``) so that the
``n`` candidates DSPy requests one after another are generated as one batched request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dspy

from tritonlm.dspy_adapter.engine import CANDIDATE_GROUP, AsyncTritonEngine, CandidateGroup, TritonEngine, engine_pair
from tritonlm.runtime.llm import LLM


def _requested_n(lm: dspy.LM, kwargs: dict[str, Any]) -> int:
    n = kwargs.get("n", lm.kwargs.get("n"))
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


class TritonLM(dspy.LM):
    """A ``dspy.LM`` served by a local tritonlm engine pair (see :func:`lm`)."""

    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        token = CANDIDATE_GROUP.set(CandidateGroup(_requested_n(self, kwargs)))
        try:
            return super().__call__(prompt, messages=messages, **kwargs)
        finally:
            CANDIDATE_GROUP.reset(token)

    async def acall(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        token = CANDIDATE_GROUP.set(CandidateGroup(_requested_n(self, kwargs)))
        try:
            return await super().acall(prompt, messages=messages, **kwargs)
        finally:
            CANDIDATE_GROUP.reset(token)

    @property
    def llm(self) -> LLM:
        """The shared tritonlm LLM (its ``stats`` and prefix-cache counters)."""
        engine = self.engine
        assert isinstance(engine, TritonEngine)
        return engine.llm


def lm(
    model: str | LLM = "default",
    *,
    temperature: float = 0.0,
    max_tokens: int = 512,
    cache: bool = True,
    num_retries: int = 0,
    dtype: str = "auto",
    **lm_kwargs: Any,
) -> TritonLM:
    """A ``dspy.LM`` backed by tritonlm: ``dspy.configure(lm=tritonlm.dspy_adapter.lm())``.

    ``model`` is a model name or folder for :class:`~tritonlm.runtime.llm.LLM` (loaded here, and
    closed by ``lm.engine.close()``) or an existing ``LLM`` (shared, never closed by DSPy).
    ``temperature=0`` decodes greedily. Other keyword arguments are ``dspy.LM`` options or
    default generation options (``top_p``, ``stop``, ``seed``, ...).
    """
    owns_llm = not isinstance(model, LLM)
    llm = LLM(model, dtype=dtype) if owns_llm else model
    name = Path(str(llm.name)).name or "model"
    sync_engine, async_engine = engine_pair(llm, name, owns_llm=owns_llm)
    return TritonLM(
        f"tritonlm/{name}",
        engine=sync_engine,
        async_engine=async_engine,
        temperature=temperature,
        max_tokens=max_tokens,
        cache=cache,
        num_retries=num_retries,
        **lm_kwargs,
    )


__all__ = ["AsyncTritonEngine", "TritonEngine", "TritonLM", "lm"]
