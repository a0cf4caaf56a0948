"""``OpenAICompatibleProvider``: a provider over a remote OpenAI-compatible server (vLLM,
SGLang, ``tritonlm serve``) through ``/v1/chat/completions``.

Needs ``httpx`` (``pip install httpx``), imported when the provider is initialized. Structured
output sends ``response_format={"type": "json_schema", ...}``; streaming reads the server-sent
events of ``stream: true`` and asks for the usage chunk (``stream_options.include_usage``).
Token usage comes from the responses' ``usage`` field; a response without one reports none.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from tritonlm.errors import ConfigError
from tritonlm.providers.base import BaseProvider, ProviderCapabilities
from tritonlm.providers.errors import ProviderError
from tritonlm.providers.json_output import parse_structured_output


class OpenAICompatibleProvider(BaseProvider):
    """Chat completions on ``base_url`` (the API root, e.g. ``http://host:8000/v1``).

    ``api_key`` (or ``initialize({"api_key": ...})``) is sent as a bearer token. ``timeout_s``
    bounds every request. ``extra_body`` is merged into every request body (server-specific
    options). ``transport`` is an optional ``httpx`` transport (tests, proxies).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        name: str = "openai-compatible",
        api_key: str | None = None,
        timeout_s: float = 120.0,
        capabilities: ProviderCapabilities | None = None,
        system_prompt: str | None = None,
        extra_body: dict[str, Any] | None = None,
        transport: Any = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must be an http(s) URL, got {base_url!r}")
        if not isinstance(model, str) or not model:
            raise ConfigError("model must be a non-empty string")
        if not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
            raise ConfigError(f"timeout_s={timeout_s!r}: must be > 0")
        super().__init__(
            name, capabilities or ProviderCapabilities(streaming=True, structured_output=True, reasoning=False)
        )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout_s = float(timeout_s)
        self.system_prompt = system_prompt
        self.extra_body = dict(extra_body or {})
        self._transport = transport
        self._client: Any = None

    # ---- set-up -------------------------------------------------------------------------------
    async def initialize(self, credentials: dict[str, Any] | None = None) -> None:
        if credentials is not None:
            if not isinstance(credentials, dict):
                raise ConfigError("credentials must be a dict such as {'api_key': ...}")
            self.api_key = credentials.get("api_key", self.api_key)
        if self._client is not None:
            await self._client.aclose()
        self._client = None
        self._http()

    def _http(self) -> Any:
        if self._client is None:
            try:
                import httpx
            except ImportError as exc:
                raise ConfigError("OpenAICompatibleProvider needs httpx: pip install httpx") from exc
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.AsyncClient(
                headers=headers, timeout=httpx.Timeout(self.timeout_s), transport=self._transport
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ---- requests -----------------------------------------------------------------------------
    def _body(self, prompt: str, max_tokens: int, temperature: float, kw: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(prompt, str):
            raise ConfigError(f"prompt must be a str, got {type(prompt).__name__}")
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": prompt})
        body: dict[str, Any] = {**self.extra_body, "model": self.model, "messages": messages}
        body.update(max_tokens=max_tokens, temperature=temperature)
        body.update(kw)  # top_p, stop, seed, ... exactly as given
        return body

    def _raise_for_status(self, response: Any, detail: str) -> None:
        """ProviderError (cause: httpx.HTTPStatusError) for a non-200 answer."""
        if response.status_code == 200:
            return
        try:
            response.raise_for_status()
        except Exception as exc:
            raise ProviderError(
                f"{self.name}: HTTP {response.status_code} from {response.request.url.path}: {detail[:500]}",
                provider=self.name,
            ) from exc
        raise ProviderError(f"{self.name}: HTTP {response.status_code}: {detail[:500]}", provider=self.name)

    def _report(self, usage: Any) -> None:
        if isinstance(usage, dict):
            prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if isinstance(prompt_tokens, int) and isinstance(completion_tokens, int):
                self.report_usage(prompt_tokens, completion_tokens)

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._http().post(f"{self.base_url}/chat/completions", json=body)
        self._raise_for_status(response, response.text)
        payload = response.json()
        self._report(payload.get("usage"))
        return payload

    @staticmethod
    def _content(payload: dict[str, Any]) -> str:
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise ProviderError(f"malformed chat completion: {json.dumps(payload)[:300]}") from exc
        return content if isinstance(content, str) else ""

    async def generate_text(self, prompt: str, max_tokens: int = 2048, temperature: float = 0.3, **kw: Any) -> str:
        return self._content(await self._post(self._body(prompt, max_tokens, temperature, kw)))

    async def generate_stream(self, prompt: str, **kw: Any) -> AsyncIterator[str]:
        max_tokens = kw.pop("max_tokens", 2048)
        temperature = kw.pop("temperature", 0.3)
        body = self._body(prompt, max_tokens, temperature, kw)
        body.update(stream=True, stream_options={"include_usage": True})
        async with self._http().stream("POST", f"{self.base_url}/chat/completions", json=body) as response:
            if response.status_code != 200:
                self._raise_for_status(response, (await response.aread()).decode(errors="replace"))
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments, event names
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("usage"):
                    self._report(chunk["usage"])
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if choice.get("index", 0) == 0 and text:
                        yield text

    async def generate_structured(self, prompt: str, schema: dict[str, Any], **kw: Any) -> dict[str, Any]:
        max_tokens = kw.pop("max_tokens", 2048)
        temperature = kw.pop("temperature", 0.3)
        schema_name = kw.pop("schema_name", "response")
        body = self._body(prompt, max_tokens, temperature, kw)
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": schema_name, "schema": schema, "strict": True},
        }
        payload = await self._post(body)
        text = self._content(payload)
        # servers that honour response_format return the bare object; tolerate fences anyway
        return parse_structured_output(text, schema, extract=True)

    async def check_health(self) -> bool:
        """True when the server answers ``GET /health`` (at the root) or ``GET {base_url}/models``."""
        root = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        try:
            client = self._http()
            for url in (f"{root}/health", f"{self.base_url}/models"):
                try:
                    response = await client.get(url)
                except Exception:
                    return False
                if response.status_code != 404:  # the endpoint exists: its answer decides
                    return response.status_code == 200
        except Exception:
            return False
        return False


__all__ = ["OpenAICompatibleProvider"]
