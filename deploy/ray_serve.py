"""Replicas of the tritonlm OpenAI server behind Ray Serve's HTTP proxy.

    pip install 'ray[serve]' 'tritonlm[serve]'
    serve run deploy.ray_serve:app          # http://127.0.0.1:8000/v1/...

Each replica is one process holding one model and one engine loop (which batches the requests
routed to it); Ray's proxy spreads requests over the replicas. Edit the constants below (or
write a YAML config for ``serve deploy``) to change the model or the replica count.
"""

from __future__ import annotations

from ray import serve

MODEL = "default"  # a HF folder, a .gguf file, a hub id, or "default"
SERVED_MODEL_NAME = "default"
NUM_REPLICAS = 2
CPUS_PER_REPLICA = 2  # torch threads per replica; on GPUs use {"num_gpus": 1} instead
MAX_ONGOING_REQUESTS = 64  # per replica: what one engine batches well


def build_replica_app():  # evaluated on each replica when it starts
    from tritonlm import LLM
    from tritonlm.server import build_app

    llm = LLM(model=MODEL, max_num_seqs=MAX_ONGOING_REQUESTS)
    return build_app(llm, SERVED_MODEL_NAME)


@serve.deployment(
    num_replicas=NUM_REPLICAS,
    ray_actor_options={"num_cpus": CPUS_PER_REPLICA},
    max_ongoing_requests=MAX_ONGOING_REQUESTS,
)
@serve.ingress(build_replica_app)
class TritonLMServer:
    """The ingress deployment; its routes are those of :func:`tritonlm.server.build_app`."""


app = TritonLMServer.bind()
