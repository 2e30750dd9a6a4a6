"""The bench's findings: plain sentences on where the time goes (latency, throughput, the warm
pool), read from the figures of a result."""

from __future__ import annotations

from typing import Any

from tooling.bench.report import dig, phase_of


def findings(result: dict[str, Any]) -> list[str]:
    """Plain sentences on where the time goes, from the figures in ``result``."""
    prof = result.get("profile") or {}
    lines: list[str] = []
    if result.get("latency"):
        lines += _latency_findings(result["latency"], prof)
    lines += _throughput_findings(result.get("throughput"), prof.get("service_times") or {})
    idle = dig(result, "footprint", "idle")
    if idle:
        cpu = max(idle, key=lambda k: idle[k]["cpu_percent"])
        rss = max(idle, key=lambda k: idle[k]["rss_mb_max"])
        lines.append(
            f"idle: the busiest worker is {cpu} at {idle[cpu]['cpu_percent']:.2f}% CPU; "
            f"the largest is {rss} at {idle[rss]['rss_mb_max']:.0f} MB RSS"
        )
    return lines


def pool_findings(result: dict[str, Any]) -> list[str]:
    """Sentences on the warm pool: how each phase's projects got their database, the floor."""
    lines: list[str] = []
    for label, section in (result.get("phases") or {}).items():
        summary = section.get("summary") or {}
        if summary.get("burst_pooled") is None:
            continue
        lines.append(
            f"{label} (pool {section.get('pool_size')}): of the burst of {summary['burst_projects']}, "
            f"{summary['burst_pooled']} took a pooled database and {summary['burst_created']} created "
            f"theirs (the burst never waits for the refill); sequential: {summary['sequential_pooled']} "
            f"pooled, {summary['sequential_created']} created" + _log_check(section.get("pool_use") or {})
        )
    off = dig(phase_of(result, "pool_off") or {}, "summary") or {}
    if off.get("e2e_ms_p50") and off.get("database_step_ms_p50") is not None:
        bound = (off["e2e_ms_p50"] - off["database_step_ms_p50"]) / off["e2e_ms_p50"]
        lines.append(
            f"the pool can only shorten the database step: with it taking no time at all, e2e p50 "
            f"would still be {bound:.2f}x the pool-off figure ({off['e2e_ms_p50']:.0f} ms less its "
            f"database step's {off['database_step_ms_p50']:.0f} ms)"
        )
    floor = dig(result, "profile", "hop_floor")
    if floor:
        lines.append(
            f"hop floor {floor['ms']:.2f} ms = idle produce->consumed p50 "
            f"{floor['produce_to_consumed_ms_p50']:.2f} + short transaction p50 "
            f"{floor['transaction_ms_p50']:.2f} + pooled query p50 {floor['checkout_query_ms_p50']:.2f}"
        )
    return lines


def _log_check(pool: dict[str, Any]) -> str:
    """The refill log's count of takes beside the watch's, when both are known."""
    logged, watched = pool.get("taken_by_the_refill_log"), pool.get("taken_by_the_watch")
    if logged is None or watched is None:
        return ""
    return f"; the refill's log counts {logged} taken, the watch {watched}"


def _latency_findings(lat: dict[str, Any], prof: dict[str, Any]) -> list[str]:
    chor, inproc = lat["choreography"], lat["in_process"]
    hops = {k: v["p50"] for k, v in chor["hop_ms"].items() if v}
    worst = max(hops, key=lambda k: hops[k])
    every, between = chor["hop_ms_all"], chor["hop_ms_between_steps"]
    lines = [
        f"hops: p50 {every['p50']:.1f} ms, p99 {every['p99']:.1f} ms over all {len(hops)} hops "
        f"(between steps only: p50 {between['p50']:.1f}, p99 {between['p99']:.1f}); the slowest "
        f"is into {worst} (p50 {hops[worst]:.1f} ms); in-process the same gaps are p50 "
        f"{inproc['hop_ms_all']['p50']:.1f} ms"
    ]
    parts = dig(prof, "hops", "between_steps")
    if parts and parts["transit_ms"]:
        lines.append(
            f"a hop between steps (p50 of each part) = previous step finishing (success commit, "
            f"event rebuilt, log line) {parts['finish_prev_ms']['p50']:.1f} ms + Kafka transit "
            f"(publish+flush, fetch, decode) {parts['transit_ms']['p50']:.1f} ms + the claim's "
            f"checkout and BEGIN {parts['pre_claim_ms']['p50']:.1f} ms"
        )
    first = prof.get("first_hop") or {}
    if first.get("request_commit_publish_ms") and first.get("after_request_ms"):
        lines.append(
            f"first hop: the request call takes p50 {first['request_commit_publish_ms']['p50']:.1f} ms "
            f"after created_at (its transaction, then the outbox relay: publish + flush + mark), "
            f"and the database worker claims the step p50 {first['after_request_ms']['p50']:.1f} ms "
            f"after the call returns"
        )
    probe = prof.get("kafka_probe")
    if probe and probe.get("produce_to_consumed_ms"):
        lines.append(
            "Kafka floor (same client settings, idle): produce+flush ack p50 "
            f"{probe['produce_flush_ack_ms']['p50']:.1f} ms, produce->consumed p50 "
            f"{probe['produce_to_consumed_ms']['p50']:.1f} ms "
            f"(p99 {probe['produce_to_consumed_ms']['p99']:.1f}), synchronous offset commit "
            f"p50 {probe['sync_commit_ms']['p50']:.1f} ms"
        )
    db = prof.get("db_probe")
    if db:
        lines.append(
            f"database (p50, idle): pooled checkout + query {db['checkout_query_ms']['p50']:.2f} ms "
            f"({db['checkout_query_no_pre_ping_ms']['p50']:.2f} without pool_pre_ping), short "
            f"transaction {db['transaction_ms']['p50']:.2f} ms, bare round trip "
            f"{db['round_trip_ms']['p50']:.2f} ms, new connection {db['new_connection_ms']['p50']:.2f}"
            f" ms; the reads a step makes only when its claim fails: repository.project "
            f"{db['repository_project_ms']['p50']:.2f} ms + repository.step "
            f"{db['repository_step_ms']['p50']:.2f} ms"
        )
    codec = prof.get("codec_probe")
    if codec:
        worst = max(codec, key=lambda k: codec[k]["decode_ms_p50"] + codec[k]["encode_ms_p50"])
        c = codec[worst]
        lines.append(
            f"codec: the costliest event ({worst}.completed, {c['bytes']} bytes) costs "
            f"{c['encode_ms_p50']:.2f} ms to encode + {c['decode_ms_p50']:.2f} ms to decode (p50)"
        )
    delta_hops = chor["total_hop_ms"]["p50"] - inproc["total_hop_ms"]["p50"]
    delta_work = chor["total_work_ms"]["p50"] - inproc["total_work_ms"]["p50"]
    lines.append(
        f"e2e p50 {chor['e2e_ms']['p50']:.1f} ms vs {inproc['e2e_ms']['p50']:.1f} ms in-process "
        f"(ratio {lat['e2e_ratio_p50']:.2f}); of the difference, hops add {delta_hops:+.1f} ms "
        f"and work {delta_work:+.1f} ms (p50 of the totals)"
    )
    work = {k: v["p50"] for k, v in chor["work_ms"].items() if v}
    heavy = max(work, key=lambda k: work[k])
    lines.append(
        f"work: the {heavy} step dominates (p50 {work[heavy]:.1f} ms of "
        f"{chor['total_work_ms']['p50']:.1f} ms of work)"
    )
    return lines


def _throughput_findings(thr: dict[str, Any] | None, service: dict[str, Any]) -> list[str]:
    if not thr or not service.get("bottleneck"):
        return []
    b = service["bottleneck"]
    s = service[b]
    ceiling = 1000.0 / s["gap_ms_p50"] if s["gap_ms_p50"] > 0 else float("nan")
    lines = []
    cp = thr.get("postgres_checkpoints") or {}
    chor, inproc = cp.get("choreography") or {}, cp.get("in_process") or {}
    if chor.get("known") and inproc.get("known"):
        lines.append(
            f"PostgreSQL checkpoints: {chor['timed'] + chor['requested']} during the burst "
            f"({chor['requested']} forced by WAL volume), {inproc['timed'] + inproc['requested']} "
            f"during the in-process baseline; a checkpoint fsyncs every file of every new tenant "
            f"database and slows the database step while it runs"
        )
    return [
        *lines,
        f"throughput: the {b} worker is the bottleneck at {s['gap_ms_p50']:.1f} ms per message "
        f"(execute_step {s['execute_step_ms_p50']:.1f} ms + {s['overhead_ms_p50']:.1f} ms of "
        f"publish/commit/poll/logging), a ceiling of about {ceiling:.1f} projects/s; measured "
        f"{thr['choreography']['projects_per_second']} vs in-process "
        f"{thr['in_process']['projects_per_second']} projects/s",
    ]
