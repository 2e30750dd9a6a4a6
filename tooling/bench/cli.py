"""``provision bench``: the choreography against the in-process baseline, on the real broker
and database, with the seven workers as separate processes.

Exit codes as the rest of the CLI: 0 the run finished (targets met or not, unless
``--check``), 1 the run failed or found lost or duplicated work, 2 bad usage.

This module is what ``provision bench --help`` loads: the commands and their options only.
Each command imports the module that runs it when it runs (the set-up's imports, psutil,
the Kafka client and the product's use cases, take seconds): :mod:`tooling.bench.suite`
for ``run``, ``latency``, ``throughput`` and ``footprint``, then one module each for
``lifecycle``, ``scale`` and ``sse``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tooling.bench.plan import DEFAULT_OUT, DEFAULT_POOL_SIZE, Plan
from tooling.bench.startup import startup

bench_app = typer.Typer(
    rich_markup_mode=None,
    help="Benchmark the choreography against the in-process handler: latency, throughput, footprint.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


# --- commands -----------------------------------------------------------------------------

Out = Annotated[Path, typer.Option("--out", help="Directory for the JSON result, PNG chart and worker logs.")]
KeepInfra = Annotated[
    bool, typer.Option("--keep-infra", help="Leave Kafka and PostgreSQL running if started here.")
]
Check = Annotated[bool, typer.Option("--check", help="Exit 1 if a target is missed.")]
Warmup = Annotated[int, typer.Option("--warmup", min=1, help="Unmeasured projects of each kind, first.")]
Concurrency = Annotated[
    int,
    typer.Option("--request-concurrency", min=1, max=64, help="Threads sending the burst."),
]
IdleSeconds = Annotated[
    float, typer.Option("--idle-seconds", min=1.0, help="How long the idle footprint is sampled.")
]
LatencyN = Annotated[
    int, typer.Option("--latency-n", "--n", min=1, help="Sequential provisions of each kind.")
]
ThroughputM = Annotated[int, typer.Option("--throughput-m", "--m", min=1, help="Projects requested at once.")]
InprocessM = Annotated[
    int,
    typer.Option("--inprocess-m", min=1, help="In-process projects of the throughput baseline (a rate)."),
]


@bench_app.command()
def run(
    *,
    latency_n: LatencyN = 30,
    throughput_m: ThroughputM = 200,
    inprocess_m: InprocessM = 50,
    skip_throughput: Annotated[
        bool, typer.Option("--skip-throughput", help="Latency and idle footprint only.")
    ] = False,
    idle_seconds: IdleSeconds = 5.0,
    warmup: Warmup = 2,
    concurrency: Concurrency = 8,
    pool_size: Annotated[
        int,
        typer.Option(
            "--pool-size",
            min=1,
            help="The warm pool of the second phase: the run measures everything with the pool "
            "off (PROVISION_TENANT_POOL_SIZE=0), restarts the database worker with this size, "
            "waits until the pool is full, and measures again; the burst (--m) must be at least "
            "twice this, so that it outruns the pool.",
        ),
    ] = DEFAULT_POOL_SIZE,
    out: Out = DEFAULT_OUT,
    keep_infra: KeepInfra = False,
    check: Check = False,
) -> None:
    """Everything, pool off then pool on: idle footprint, latency, throughput with the load
    footprint and the Kafka and commit probes, integrity, the targets."""
    if not skip_throughput and throughput_m < 2 * pool_size:
        raise typer.BadParameter(
            f"a burst of {throughput_m} does not outrun a pool of {pool_size}: use --m {2 * pool_size} "
            "or more",
            param_hint="--m",
        )
    _execute(
        Plan(
            "run",
            latency_n=latency_n,
            throughput_m=0 if skip_throughput else throughput_m,
            inprocess_m=0 if skip_throughput else inprocess_m,
            idle_seconds=idle_seconds,
            warmup=warmup,
            concurrency=concurrency,
            out=out,
            keep_infra=keep_infra,
            check=check,
            pool_size=pool_size,
        )
    )


@bench_app.command()
def latency(
    *,
    latency_n: LatencyN = 30,
    warmup: Warmup = 2,
    out: Out = DEFAULT_OUT,
    keep_infra: KeepInfra = False,
    check: Check = False,
) -> None:
    """End to end, hops and work: N sequential provisions of each kind, interleaved."""
    _execute(
        Plan(
            "latency",
            latency_n=latency_n,
            warmup=warmup,
            out=out,
            keep_infra=keep_infra,
            check=check,
        )
    )


@bench_app.command()
def throughput(
    *,
    throughput_m: ThroughputM = 200,
    inprocess_m: InprocessM = 50,
    warmup: Warmup = 2,
    concurrency: Concurrency = 8,
    out: Out = DEFAULT_OUT,
    keep_infra: KeepInfra = False,
    check: Check = False,
) -> None:
    """Projects per second: a burst through the workers against the handler run in a row."""
    _execute(
        Plan(
            "throughput",
            throughput_m=throughput_m,
            inprocess_m=inprocess_m,
            warmup=warmup,
            concurrency=concurrency,
            out=out,
            keep_infra=keep_infra,
            check=check,
        )
    )


@bench_app.command()
def footprint(
    *,
    idle_seconds: IdleSeconds = 5.0,
    load_m: Annotated[
        int, typer.Option("--load-m", min=1, help="Projects of the burst the load is sampled on.")
    ] = 100,
    warmup: Warmup = 1,
    concurrency: Concurrency = 8,
    out: Out = DEFAULT_OUT,
    keep_infra: KeepInfra = False,
    check: Check = False,
) -> None:
    """RSS and CPU of each worker, idle and during a burst (no in-process baseline)."""
    _execute(
        Plan(
            "footprint",
            throughput_m=load_m,
            idle_seconds=idle_seconds,
            warmup=warmup,
            concurrency=concurrency,
            out=out,
            keep_infra=keep_infra,
            check=check,
        )
    )


@bench_app.command()
def lifecycle(
    *,
    throughput_m: ThroughputM = 200,
    deprovision: Annotated[
        int, typer.Option("--deprovision", min=0, help="Of the burst, how many are deprovisioned in flight.")
    ] = 50,
    lag: Annotated[
        int,
        typer.Option("--lag", min=0, help="Deprovision each that many requests after its own (0: at once)."),
    ] = 0,
    warmup: Warmup = 1,
    concurrency: Concurrency = 8,
    out: Out = DEFAULT_OUT,
    keep_infra: KeepInfra = False,
) -> None:
    """A burst of M, D of them deprovisioned while it runs: none of the others lost, nothing left of the D."""
    from tooling.bench.lifecycle import run as run_lifecycle  # noqa: PLC0415 - keep --help fast

    if deprovision > throughput_m:
        raise typer.BadParameter(
            f"cannot deprovision {deprovision} of {throughput_m}", param_hint="--deprovision"
        )
    plan = Plan(
        "lifecycle",
        throughput_m=throughput_m,
        warmup=warmup,
        concurrency=concurrency,
        out=out,
        keep_infra=keep_infra,
    )
    run_lifecycle(plan, deprovision, lag)


@bench_app.command()
def scale(
    *,
    m: Annotated[
        int, typer.Option("--m", min=1, help="Projects of each burst, and tenants of each ceiling.")
    ] = 60,
    max_instances: Annotated[
        int, typer.Option("--max-instances", min=1, max=6, help="Database step instances of the last run.")
    ] = 3,
    pool_size: Annotated[
        int,
        typer.Option(
            "--pool-size",
            min=0,
            help="After k=1, another burst of M with one database instance and a warm pool of this "
            "size (the worker restarted with it, the pool full first), compared with k=1's "
            "ceiling; every other burst runs with the pool off. 0: no such burst.",
        ),
    ] = DEFAULT_POOL_SIZE,
    warmup: Warmup = 1,
    concurrency: Concurrency = 8,
    out: Out = DEFAULT_OUT,
    keep_infra: KeepInfra = False,
    check: Check = False,
) -> None:
    """Throughput with 1..3 database step instances, each against k parallel psql sessions doing its SQL;
    with a warm pool, k=1 once more."""
    from tooling.bench.scale import run as run_scale  # noqa: PLC0415 - keep --help fast

    plan = Plan(
        "scale",
        throughput_m=m,
        warmup=warmup,
        concurrency=concurrency,
        out=out,
        keep_infra=keep_infra,
        check=check,
    )
    run_scale(plan, max_instances, pool_size)


@bench_app.command()
def sse(
    *,
    m: Annotated[
        int, typer.Option("--m", min=1, help="Projects requested through the API, each watched.")
    ] = 20,
    watchers: Annotated[
        int, typer.Option("--watchers", min=0, help="SSE streams held open on idle projects.")
    ] = 100,
    idle_seconds: Annotated[
        float, typer.Option("--idle-seconds", min=1.0, help="How long the API's idle CPU is sampled.")
    ] = 30.0,
    warmup: Warmup = 1,
    out: Out = DEFAULT_OUT,
    keep_infra: KeepInfra = False,
    check: Check = False,
) -> None:
    """The HTTP API: SSE latency from commit, LISTEN/NOTIFY against the topics, idle CPU of watchers."""
    from tooling.bench.sse import run as run_sse  # noqa: PLC0415 - keep --help fast

    plan = Plan("sse", throughput_m=m, warmup=warmup, out=out, keep_infra=keep_infra, check=check)
    run_sse(plan, watchers, idle_seconds)


def _execute(plan: Plan) -> None:
    """Carry out a plan of run, latency, throughput or footprint (their module loaded now)."""
    from tooling.bench import suite  # noqa: PLC0415 - keep --help fast

    suite.run(plan)


bench_app.command()(startup)
