"""OpenAI-compatible HTTP server (``tritonlm serve``). Needs the ``serve`` extra (FastAPI, uvicorn)."""

from tritonlm.server.app import build_app, serve

__all__ = ["build_app", "serve"]
