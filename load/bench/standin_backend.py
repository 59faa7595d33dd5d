"""A stand-in Triton backend for measuring the router's own ceiling: answers ModelInfer with fixed bytes.

    python -m helmrec.load.bench.standin_backend --port 9001

Why not a tritonserver: to find where the router saturates, the backends
behind it must be faster than it. A tritonserver ranking HSTU on CPU answers
about 1,000 requests a second on this machine, far below one router worker,
so a bench against it measures the model. This process speaks the same gRPC
service (`inference.GRPCInferenceService`: ServerReady, ServerLive,
ModelInfer) and answers every ModelInfer with one pre-built
ModelInferResponse the shape of a real answer (SCORES, FP32 [16, 2]), without
parsing the request, so its cost per request is gRPC's alone. It is only for
benchmarks: it ranks nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

SERVICE = "inference.GRPCInferenceService"


def canned_answer(candidates: int = 16) -> bytes:
    scores = np.zeros((candidates, 2), np.float32)
    response = service_pb2.ModelInferResponse(model_name="hstu_ensemble", model_version="1")
    response.outputs.add(name="SCORES", datatype="FP32", shape=list(scores.shape))
    response.raw_output_contents.append(scores.tobytes())  # where Triton puts a tensor's bytes
    return response.SerializeToString()


async def serve(host: str, port: int) -> None:
    answer = canned_answer()
    ready = service_pb2.ServerReadyResponse(ready=True).SerializeToString()
    live = service_pb2.ServerLiveResponse(live=True).SerializeToString()

    async def model_infer(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return answer

    async def server_ready(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return ready

    async def server_live(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return live

    handlers = {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer),
        "ServerReady": grpc.unary_unary_rpc_method_handler(server_ready),
        "ServerLive": grpc.unary_unary_rpc_method_handler(server_live),
    }
    server = grpc.aio.server(options=(("grpc.max_receive_message_length", -1),))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"stand-in backend ready on {host}:{bound}", flush=True)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
