"""Replicas of the tritonlm OpenAI server behind Ray Serve's HTTP proxy.

    pip install 'ray[serve]' 'tritonlm[serve]'
    serve run deploy.ray_serve:build                          # 2 replicas of the default model
    serve run deploy.ray_serve:build replicas=4 cpus_per_replica=8 model=/models/qwen
    # then http://127.0.0.1:8000/v1/chat/completions ...

Each replica is one process holding one model and one engine loop (which batches the requests
routed to it); Ray's proxy spreads requests over the replicas. ``build`` is a Ray Serve
application builder: the ``key=value`` arguments of ``serve run`` (or ``args:`` in a config
file for ``serve deploy``) choose the model, the served name, the replica count, the CPUs (or
GPUs) per replica and how many requests one replica takes at once.
"""

from __future__ import annotations

import os

from ray import serve
from ray.serve import Application

# The replica reads its model from its environment: the ingress builder takes no arguments.
_MODEL_ENV = "TRITONLM_RAY_MODEL"
_NAME_ENV = "TRITONLM_RAY_SERVED_MODEL_NAME"
_MAX_SEQS_ENV = "TRITONLM_RAY_MAX_NUM_SEQS"


def _replica_app():  # evaluated on each replica when it starts
    from tritonlm import LLM
    from tritonlm.server import build_app

    llm = LLM(model=os.environ[_MODEL_ENV], max_num_seqs=int(os.environ[_MAX_SEQS_ENV]))
    return build_app(llm, os.environ[_NAME_ENV])


@serve.deployment
@serve.ingress(_replica_app)
class TritonLMServer:
    """The ingress deployment; its routes are those of :func:`tritonlm.server.build_app`."""


def build(args: dict[str, str]) -> Application:
    """``model`` (a HF folder, a .gguf file, a hub id or "default"), ``served_model_name``,
    ``replicas`` (2), ``cpus_per_replica`` (2; torch threads), ``gpus_per_replica`` (0),
    ``max_ongoing_requests`` (64 per replica: what one engine batches well)."""
    model = args.get("model", "default")
    max_ongoing = int(args.get("max_ongoing_requests", 64))
    env = {_MODEL_ENV: model, _NAME_ENV: args.get("served_model_name", "default"), _MAX_SEQS_ENV: str(max_ongoing)}
    actor_options = {
        "num_cpus": float(args.get("cpus_per_replica", 2)),
        "num_gpus": float(args.get("gpus_per_replica", 0)),
        "runtime_env": {"env_vars": env},
    }
    return TritonLMServer.options(
        num_replicas=int(args.get("replicas", 2)),
        ray_actor_options=actor_options,
        max_ongoing_requests=max_ongoing,
    ).bind()
