"""The router: a KServe-v2 (gRPC + HTTP) front door for several Triton instances
with EMB-KV-aware routing. See router/README.md and docs/router.md."""
