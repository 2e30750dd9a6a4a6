"""The commands the tooling adds to `provision`, declared for the ``provision.commands`` entry
points: each is imported only when it runs, like the product's own (:mod:`services.cli.lazy`)."""

from services.cli.lazy import LazyCommand

infra = LazyCommand(
    "infra",
    "tooling.infra.cli:infra_app",
    "Run a local Kafka broker and PostgreSQL (no Docker).",
    extra="local",
)
bench = LazyCommand(
    "bench",
    "tooling.bench.cli:bench_app",
    "Benchmark the choreography against the in-process run.",
    extra="bench",
)
demo = LazyCommand("demo", "tooling.demo:demo", "Everything end to end on the local defaults.", extra="local")
engine = LazyCommand(
    "engine", "tooling.engine.cli:engine_app", "A Docker engine of our own and the project's images on it."
)
