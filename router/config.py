"""Settings of the router: where the backends are and how hard to push them.

Every knob lives in one frozen dataclass so a test, the CLI and the cluster
simulator build exactly the same router from the same values.
"""

from __future__ import annotations

from dataclasses import dataclass

from helmrec.router.limits import DEFAULT_MAX_REQUEST_BYTES

POLICIES = ("round_robin", "least_loaded", "kv_aware", "emb_aware", "helm")
# Who serves the gRPC front door's ModelInfer: grpc.aio in this process, or the
# native hop (router/native_hop.py) with this process as its control plane.
DATA_PLANES = ("python", "native")
# The model clients may call through the router. The repository's others
# (`hstu`, `hstu_pool`) are its internals: reachable only when named.
PUBLIC_MODELS = ("hstu_ensemble",)


class ConfigError(ValueError):
    """A setting the operator wrote wrong; the message names the flag and the rule."""


@dataclass(frozen=True)
class BackendAddress:
    """One Triton instance: its gRPC port, and optionally its HTTP and metrics ports.

    HTTP requests can only go to backends with an HTTP port; metrics (alpha,
    KV cached users, evictions, queue) are only polled where a metrics port is
    given, otherwise the router relies on its own placement record alone.
    """

    host: str
    grpc_port: int
    http_port: int | None = None
    metrics_port: int | None = None

    @classmethod
    def parse(cls, spec: str) -> BackendAddress:
        """Parse `HOST:GRPC_PORT[,http=PORT][,metrics=PORT]`."""
        head, *options = [part.strip() for part in spec.split(",")]
        host, sep, port = head.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"--backend {spec!r}: expected HOST:GRPC_PORT[,http=PORT][,metrics=PORT]")
        ports: dict[str, int] = {"grpc": _port(spec, "grpc", port)}
        for option in options:
            key, eq, value = option.partition("=")
            if not eq or key not in ("http", "metrics"):
                raise ConfigError(f"--backend {spec!r}: unknown option {option!r} (allowed: http=PORT, metrics=PORT)")
            if key in ports:
                raise ConfigError(f"--backend {spec!r}: {key}= given twice")
            ports[key] = _port(spec, key, value)
        return cls(host, ports["grpc"], ports.get("http"), ports.get("metrics"))

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_base(self) -> str | None:
        return None if self.http_port is None else f"http://{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str | None:
        return None if self.metrics_port is None else f"http://{self.host}:{self.metrics_port}/metrics"

    def __str__(self) -> str:
        return self.grpc_target


def _port(spec: str, what: str, value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ConfigError(f"--backend {spec!r}: {what} port must be an integer in 1..65535, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class RouterConfig:
    """The router process: front-door ports, backends, policy and limits."""

    backends: tuple[BackendAddress, ...]
    policy: str = "helm"
    host: str = "127.0.0.1"
    grpc_port: int = 0  # 0: let the kernel pick (tests); the CLI defaults to 8001
    http_port: int | None = 0  # None: no HTTP front door
    metrics_port: int | None = None  # the router's own Prometheus endpoint
    # A backend never has more than this many requests from this router in
    # flight; past it the router answers RESOURCE_EXHAUSTED instead of queueing
    # without bound (Triton queues internally already; a second unbounded queue
    # in front of it only hides overload from the client).
    max_in_flight_per_backend: int = 64
    health_interval_s: float = 0.5
    metrics_interval_s: float = 1.0
    # Probe timeout: a backend that cannot answer ServerReady in this time is out.
    health_timeout_s: float = 1.0
    # Deadline for a forwarded request when the client set none.
    request_timeout_s: float = 60.0
    # Largest request body or gRPC message let in; past it HTTP 413 /
    # RESOURCE_EXHAUSTED before it is buffered (router/limits.py derives it).
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    # An HTTP body must arrive within this time: a client that promises more
    # than it sends would otherwise hold a socket and a buffer indefinitely.
    body_timeout_s: float = 10.0
    # Models reachable through the router (inference, metadata, statistics).
    exposed_models: tuple[str, ...] = PUBLIC_MODELS
    # This process is one of `workers` routers sharing its gRPC and HTTP ports
    # (SO_REUSEPORT: the kernel deals connections among them). Rendezvous homes
    # make them agree on every user; `helm`'s guard counts its in-flight x workers.
    workers: int = 1
    # `--backend-file`: the backend list is re-read from this file when it changes
    # (polled every `backend_file_interval_s`) or on SIGHUP; `backends` is its
    # content at start.
    backend_file: str | None = None
    backend_file_interval_s: float = 1.0
    data_plane: str = "python"

    def __post_init__(self) -> None:
        if not self.backends:
            raise ConfigError("RouterConfig.backends: at least one --backend is required")
        if self.policy not in POLICIES:
            raise ConfigError(f"--policy {self.policy!r}: expected one of {', '.join(POLICIES)}")
        if self.max_in_flight_per_backend < 1:
            raise ConfigError(f"--max-in-flight {self.max_in_flight_per_backend}: must be >= 1")
        if self.workers < 1:
            raise ConfigError(f"--workers {self.workers}: must be >= 1")
        if self.workers > 1 and (self.grpc_port == 0 or self.http_port == 0):
            raise ConfigError(
                f"--workers {self.workers}: needs fixed --grpc-port and --http-port (port 0 would give each worker its own)"
            )
        if self.data_plane not in DATA_PLANES:
            raise ConfigError(f"--data-plane {self.data_plane!r}: expected one of {', '.join(DATA_PLANES)}")
        if self.data_plane == "native" and self.policy == "emb_aware":
            raise ConfigError("--data-plane native runs every policy but emb_aware (its EMB sketch lives in Python)")
        if self.data_plane == "native" and self.workers > 1:
            raise ConfigError(
                f"--workers {self.workers}: --data-plane native is one multi-threaded hop; workers are for --data-plane python"
            )
        if self.max_request_bytes < 1:
            raise ConfigError(f"--max-request-bytes {self.max_request_bytes}: must be >= 1")
        if not self.exposed_models or not all(self.exposed_models):
            raise ConfigError(f"--expose-model {list(self.exposed_models)}: at least one non-empty model name")
        for name in (
            "health_interval_s",
            "metrics_interval_s",
            "health_timeout_s",
            "request_timeout_s",
            "body_timeout_s",
            "backend_file_interval_s",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"RouterConfig.{name} must be > 0, got {getattr(self, name)}")
        if len({b.grpc_target for b in self.backends}) != len(self.backends):
            raise ConfigError("--backend: the same HOST:GRPC_PORT is given twice")

    def refusal(self, model: str) -> str | None:
        """Why `model` may not be called through this router (NOT_FOUND / 404), or None if it may."""
        if model in self.exposed_models:
            return None
        return (
            f"model {model!r} is not served through the router "
            f"(exposed: {', '.join(self.exposed_models)}; --expose-model NAME makes another reachable)"
        )
