"""Results as JSON and a markdown table (every figure next to its same-run baseline), with the
issue's targets checked. Benchmarks report; nothing here fails a build."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from bench import profile_api, vectorize

Row = tuple[str, str, str, str, str, str]  # figure, value, baseline, ratio, target, met


def _get(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt(value: float | None, digits: int = 2, unit: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{unit}"


def _met(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**no**")


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    service = _get(r, "service", "negotiated", "pages_per_s")
    seed_b = _get(r, "seed_style", "B_load_once_per_task", "pages_per_s")
    negotiated = _get(r, "service", "negotiated", "image_bytes")
    full = _get(r, "service", "full_size", "image_bytes") or _get(
        r, "setup", "full_size_bytes_total"
    )
    gpu = limit_here(r) == "gpu"
    checks = [
        (
            "service ≥ 0.9× raw end to end (the CPU limit)",
            _ratio(service, _get(r, "raw_e2e", "pages_per_s")),
            ">=",
            0.9,
            not gpu,
        ),
        (
            "service ≥ 0.9× raw inference only (the GPU limit)",
            _ratio(service, _get(r, "raw", "pages_per_s")),
            ">=",
            0.9,
            gpu,
        ),
        ("service ≥ 8× seed-style (faster variant B)", _ratio(service, seed_b), ">=", 8.0),
        ("negotiated bytes ≤ 1/4 of full size", _ratio(negotiated, full), "<=", 0.25),
        (
            "noop round trip ≤ 2.5× bare Celery (median)",
            _get(r, "overhead", "ratio_median"),
            "<=",
            2.5,
        ),
        ("/status ≥ 0.5× /healthz requests/s", _get(r, "status_load", "ratio_rps"), ">=", 0.5),
        (
            "slow hosts: K tasks ≥ 0.9× one task from a zero-latency host",
            _get(r, "slow_hosts", "ratio"),
            ">=",
            0.9,
        ),
        (
            "one-page task behind a big one ≤ 2× on an idle worker",
            _get(r, "small_behind_big", "ratio"),
            "<=",
            2.0,
        ),
        (
            "requests per page on a level-2 host ≤ 1.05",
            _get(r, "requests_per_page", "level2", "requests_per_page"),
            "<=",
            1.05,
        ),
        (
            "no full-size request where a sized one is allowed",
            _full_size_requests(r),
            "<=",
            0,
        ),
        ("cancel < 2 s", _get(r, "cancel", "terminate_to_cancelled_s"), "<", 2.0),
        (
            "10,000-page book: ≥ 0.85× the attainable rate",
            _get(r, "book10k", "ratio_to_attainable"),
            ">=",
            0.85,
        ),
        (
            "10,000-page book: status p99 < 0.25 s",
            _get(r, "book10k", "book", "status_p99_s"),
            "<",
            0.25,
        ),
        (
            "10,000-page book: finished status < 1 MB",
            _get(r, "book10k", "book", "status_bytes_finished"),
            "<",
            1_000_000,
        ),
        (
            "10,000-page book: result fetched < 10 s",
            _get(r, "book10k", "result", "whole_s"),
            "<",
            10.0,
        ),
        ("worker RSS growth < 5 %", _get(r, "memory", "rss_growth_pct"), "<", 5.0),
    ]
    out = []
    for name, value, op, limit, *applies in checks:
        met = None
        if value is not None and (not applies or applies[0]):
            met = {">=": value >= limit, "<=": value <= limit, "<": value < limit}[op]
        out.append(
            {
                "target": name,
                "value": value,
                "limit": f"{op} {limit}",
                "met": met,
                "applies": not applies or applies[0],
            }
        )
    return out


def limit_here(r: dict[str, Any]) -> str:
    """Which raw baseline bounds the service on the machine the run was on: on a GPU decoding
    runs beside inference (inference only); on a CPU both share the cores (end to end)."""
    return "gpu" if _get(r, "meta", "gpu") else "cpu"


def _full_size_requests(r: dict[str, Any]) -> int | None:
    """Full-size images asked for in the runs whose manifests allow sized requests."""
    runs = [
        *(_get(r, "service", "negotiated", "rounds") or []),
        *(_get(r, "requests_per_page") or {}).values(),
    ]
    counted = [run["requests_by_kind"]["full"] for run in runs if "requests_by_kind" in run]
    return sum(counted) if counted else None


def _methods(run: dict[str, Any] | None) -> str:
    """How the worker planned its image requests ("computed", "info.json", ...)."""
    return ", ".join((run or {}).get("request_methods") or []) or "?"


def download_ceiling(r: dict[str, Any]) -> dict[str, Any] | None:
    """Pages/s the worker's downloads allow: at most `per_host_concurrency` requests at once to
    the image server, each page taking `fetch_s / pages` of one download slot."""
    rounds = _get(r, "service", "negotiated", "rounds") or []
    timed = [x for x in rounds if x.get("worker_timings") and x.get("pipeline")]
    if not timed:
        return None
    run = timed[-1]
    per_host = min(run["pipeline"]["per_host_concurrency"], run["pipeline"]["download_threads"])
    fetch_ms = run["worker_timings"]["fetch_s"] / run["pages"] * 1000
    return {
        "per_host": per_host,
        "methods": _methods(run),
        "fetch_ms_per_page": fetch_ms,
        "pages_per_s": per_host / fetch_ms * 1000,
    }


def rows(r: dict[str, Any]) -> list[Row]:
    raw_best = _get(r, "raw", "pages_per_s")
    best = _get(r, "raw", "best_backend") or "?"
    service = _get(r, "service", "negotiated", "pages_per_s")
    seed_a = _get(r, "seed_style", "A_reload_per_image", "pages_per_s")
    seed_b = _get(r, "seed_style", "B_load_once_per_task", "pages_per_s")
    out: list[Row] = []
    for name in ("onnx", "torch"):
        timed = _get(r, "raw", name)
        if timed:
            out.append(
                (
                    f"raw {name}: pages/s (median latency)",
                    f"{timed['pages_per_s']:.2f} ({timed['latency_median_ms']:.1f} ms)",
                    f"raw best ({best}) {_fmt(raw_best)}",
                    _fmt(_ratio(timed["pages_per_s"], raw_best)),
                    "",
                    "",
                )
            )
    agreement = _get(r, "raw", "box_agreement")
    if agreement and "max_box_diff_px" in agreement:
        out.append(
            (
                "torch vs onnx: max box difference",
                f"{agreement['max_box_diff_px']} px, conf {agreement['max_confidence_diff']}",
                f"{agreement['matched_boxes']} matched, {agreement['unmatched_boxes']} unmatched "
                f"(max conf {agreement['max_unmatched_confidence']})",
                "",
                "",
                "",
            )
        )
    for label, key in (
        ("A: model loaded per image", "A_reload_per_image"),
        ("B: model loaded per task", "B_load_once_per_task"),
    ):
        value = _get(r, "seed_style", key, "pages_per_s")
        if value is not None:
            out.append(
                (
                    f"seed-style {label}: pages/s",
                    _fmt(value, 3),
                    f"service {_fmt(service)}",
                    f"service = {_fmt(_ratio(service, value), 1)}×",
                    "",
                    "",
                )
            )
    e2e = _get(r, "raw_e2e")
    if e2e and "pages_per_s" in e2e:
        out.append(
            (
                f"raw end to end ({e2e['processes']} processes × {e2e['threads_per_process']} "
                "threads: decode + shrink + predict from bytes in memory): pages/s",
                _fmt(e2e["pages_per_s"]),
                f"raw inference only ({best}) {_fmt(raw_best)}",
                _fmt(_ratio(e2e["pages_per_s"], raw_best)),
                "",
                "",
            )
        )
    tmap = {t["target"]: t for t in targets(r)}
    if service is not None:
        here = limit_here(r)
        for key, label, baseline, value in (
            (
                "cpu",
                "raw end to end (the CPU limit)",
                "raw end to end",
                _get(e2e or {}, "pages_per_s"),
            ),
            ("gpu", "raw inference only (the GPU limit)", f"raw best ({best})", raw_best),
        ):
            t = tmap[f"service ≥ 0.9× {label}"]
            applies = "≥ 0.9" if key == here else f"≥ 0.9 on a {key.upper()} only"
            out.append(
                (
                    f"service (IIIF, negotiated): pages/s vs {label}",
                    _fmt(service),
                    f"{baseline} {_fmt(value)}",
                    _fmt(t["value"]),
                    applies,
                    _met(t["met"]),
                )
            )
        t = tmap["service ≥ 8× seed-style (faster variant B)"]
        out.append(
            (
                "service vs seed-style B",
                _fmt(service),
                f"seed B {_fmt(seed_b, 3)}",
                _fmt(t["value"], 1),
                "≥ 8",
                _met(t["met"]),
            )
        )
        out.append(
            (
                "service vs seed-style A",
                _fmt(service),
                f"seed A {_fmt(seed_a, 3)}",
                _fmt(_ratio(service, seed_a), 1),
                "",
                "",
            )
        )
        ceiling = download_ceiling(r)
        if ceiling is not None:
            out.append(
                (
                    "service: download ceiling (per-host limit / fetch time per page)",
                    _fmt(ceiling["pages_per_s"]),
                    f"{ceiling['per_host']} at once × {ceiling['fetch_ms_per_page']:.0f} ms "
                    f"per page (requests planned: {ceiling['methods']})",
                    _fmt(_ratio(service, ceiling["pages_per_s"])),
                    "",
                    "",
                )
            )
        ttfp = _get(r, "service", "negotiated", "time_to_first_page_s")
        out.append(("service: time to first page result", _fmt(ttfp, 3, " s"), "", "", "", ""))
    full_run = _get(r, "service", "full_size")
    if full_run:
        out.append(
            (
                "service without size negotiation: pages/s",
                _fmt(full_run["pages_per_s"]),
                f"negotiated {_fmt(service)}",
                _fmt(_ratio(full_run["pages_per_s"], service)),
                "",
                "",
            )
        )
        t = tmap["negotiated bytes ≤ 1/4 of full size"]
        negotiated = _get(r, "service", "negotiated", "image_bytes")
        out.append(
            (
                "image bytes downloaded, negotiated",
                f"{negotiated / 1e6:.1f} MB",
                f"full size {full_run['image_bytes'] / 1e6:.1f} MB",
                _fmt(t["value"], 3),
                "≤ 0.25",
                _met(t["met"]),
            )
        )
    out += request_rows(r, tmap)
    scaling = _get(r, "scaling") or {}
    first = next(iter(scaling.values()), None)
    for n, run in scaling.items():
        out.append(
            (
                f"scaling: service pages/s at N={n}",
                _fmt(run["pages_per_s"]),
                f"N={next(iter(scaling))} {_fmt(first['pages_per_s'])}" if first else "",
                _fmt(_ratio(run["pages_per_s"], first["pages_per_s"] if first else None)),
                "",
                "",
            )
        )
    out += overlap_rows(r, tmap)
    out += book_rows(r, tmap)
    ov = _get(r, "overhead")
    if ov:
        t = tmap["noop round trip ≤ 2.5× bare Celery (median)"]
        noop, ping = ov["noop_submit_to_terminal"], ov["celery_ping_round_trip"]
        out.append(
            (
                f"noop task submit→terminal ({ov['tasks']}), median / p99",
                f"{noop['median_ms']:.1f} / {noop['p99_ms']:.1f} ms",
                f"celery ping {ping['median_ms']:.1f} / {ping['p99_ms']:.1f} ms",
                f"{ov['ratio_median']:.2f} / {ov['ratio_p99']:.2f}",
                "≤ 2.5 (median)",
                _met(t["met"]),
            )
        )
        hop, run = ov.get("noop_created_to_started"), ov.get("noop_started_to_finished")
        split = (
            f" (queue hop {hop['median_ms']:.1f} + run and end {run['median_ms']:.1f})"
            if hop and run
            else ""
        )
        out.append(
            (
                "noop: submit request / record created→finished, medians",
                f"{ov['noop_submit_request']['median_ms']:.1f} / "
                f"{ov['noop_server_created_to_finished']['median_ms']:.1f} ms{split}",
                f"status polled every {ov['poll_interval_ms']:g} ms",
                "",
                "",
                "",
            )
        )
    sl = _get(r, "status_load")
    if sl:
        t = tmap["/status ≥ 0.5× /healthz requests/s"]
        st, hz = sl["status"], sl["healthz"]
        out.append(
            (
                "GET /status: req/s (p99)",
                f"{st['requests_per_s']:.0f} ({st.get('p99_ms', 0):.1f} ms)",
                f"/healthz {hz['requests_per_s']:.0f} ({hz.get('p99_ms', 0):.1f} ms)",
                _fmt(sl["ratio_rps"]),
                "≥ 0.5",
                _met(t["met"]),
            )
        )
    cancel = _get(r, "cancel")
    if cancel:
        t = tmap["cancel < 2 s"]
        out.append(
            (
                "cancel: DELETE → CANCELLED",
                _fmt(cancel["terminate_to_cancelled_s"], 3, " s"),
                f"{cancel['done_when_cancelled']}/{cancel['pages']} pages done",
                "",
                "< 2 s",
                _met(t["met"]),
            )
        )
        pids, loads = cancel["worker_pid"], cancel["model_loads_in_process"]
        out.append(
            (
                "cancelled task's process lives on, next task loads no model",
                "yes" if cancel["same_process_no_reload"] else "**no**",
                f"pid {pids['cancelled_task']} (next task: {pids['next']}), loads "
                f"{loads['cancelled_task']} → {loads['next']}",
                "",
                "",
                "",
            )
        )
    mem = _get(r, "memory")
    if mem:
        t = tmap["worker RSS growth < 5 %"]
        processes = mem.get("per_process_at_start") or []
        if processes:
            mib = {k: [p[k] for p in processes] for k in ("rss_mib", "uss_mib", "pss_mib")}
            out.append(
                (
                    f"one pool process (of {len(processes)}): RSS / own (USS) / PSS",
                    f"{max(mib['rss_mib']):.0f} / {max(mib['uss_mib']):.0f} / "
                    f"{max(mib['pss_mib']):.0f} MiB",
                    f"all {len(processes)}: RSS {sum(mib['rss_mib']):.0f}, "
                    f"USS {sum(mib['uss_mib']):.0f}, PSS {sum(mib['pss_mib']):.0f} MiB",
                    "",
                    "",
                    "",
                )
            )
        out.append(
            (
                f"worker pool RSS ({len(processes) or 1} processes) after {mem['tasks']} tasks",
                f"{mem['rss_after_mib']} MiB",
                f"before {mem['rss_before_mib']} MiB (peak {mem.get('rss_peak_mib', '—')} MiB)",
                f"{mem['rss_growth_pct']:+.2f} %",
                "< 5 %",
                _met(t["met"]),
            )
        )
    return out


def book_rows(r: dict[str, Any], tmap: dict[str, dict[str, Any]]) -> list[Row]:
    """The 10,000-page manifest behind a 100 ms host (bench/book.py)."""
    b = _get(r, "book10k")
    if not b:
        return []
    run, result = b["book"], b["result"]
    unhindered = b["unhindered"]["pages_per_s"]
    ceiling = b["per_host_places"] / (b["latency_ms"] / 1000)
    once = b["each_page_fetched_once"] and result["items_each_once_whole"]
    t = [tmap[name] for name in tmap if name.startswith("10,000-page book")]
    return [
        (
            f"10,000-page book ({b['latency_ms']:.0f} ms host): pages/s ({run['state']})",
            _fmt(run["pages_per_s"]),
            f"attainable {_fmt(b['attainable_pages_per_s'])} = min(unhindered "
            f"{_fmt(unhindered)}, {b['per_host_places']} places / {b['latency_ms']:.0f} ms "
            f"= {ceiling:.0f})",
            _fmt(b["ratio_to_attainable"]),
            "≥ 0.85",
            _met(t[0]["met"]),
        ),
        (
            "10,000-page book: /status while it runs, p50 / p99",
            f"{run['status_p50_s'] * 1000:.1f} / {run['status_p99_s'] * 1000:.1f} ms",
            f"{run['status_polls']} polls, ≤ {run['status_max_bytes_running']} B each",
            "",
            "p99 < 250 ms",
            _met(t[1]["met"]),
        ),
        (
            "10,000-page book: finished status",
            f"{run['status_bytes_finished'] / 1000:.0f} kB",
            f"whole result {result['whole_bytes'] / 1e6:.1f} MB",
            "",
            "< 1 MB",
            _met(t[2]["met"]),
        ),
        (
            "10,000-page book: result fetch, whole / paged",
            f"{result['whole_s']:.2f} s / {result['paged_s']:.2f} s",
            f"{result['paged_requests']} pages of items",
            "",
            "< 10 s",
            _met(t[3]["met"]),
        ),
        (
            "10,000-page book: every page once",
            "yes" if once else "**no**",
            f"{b['image_requests']} image requests, host at most {b['host_max_inflight']} at once",
            "",
            "",
            "",
        ),
        (
            "10,000-page book: Redis / worker memory",
            f"Redis {b['redis_after']['used_mib']} MiB (peak {b['redis_after']['peak_mib']}); "
            f"worker peak {b['worker_rss_peak_mib']} MiB",
            f"before: Redis {b['redis_before']['used_mib']} MiB, worker "
            f"{b['worker_rss_before_mib']} MiB",
            "",
            "",
            "",
        ),
    ]


def request_rows(r: dict[str, Any], tmap: dict[str, dict[str, Any]]) -> list[Row]:
    found = _get(r, "requests_per_page")
    if not found:
        return []
    level2, level0 = found["level2"], found["level0"]
    t = tmap["requests per page on a level-2 host ≤ 1.05"]
    out: list[Row] = [
        (
            "requests per page, level-2 host (request computed from the manifest)",
            f"{level2['requests_per_page']:.2f} ({level2['info_json_per_page']:.2f} info.json)",
            f"level 0 without sizes {level0['requests_per_page']:.2f} "
            f"({level0['info_json_per_page']:.2f} info.json)",
            _fmt(_ratio(level2["requests_per_page"], level0["requests_per_page"])),
            "≤ 1.05",
            _met(t["met"]),
        ),
        (
            "pages/s, level-2 host vs level 0 (one run each)",
            _fmt(level2["pages_per_s"]),
            f"level 0 {_fmt(level0['pages_per_s'])}",
            _fmt(_ratio(level2["pages_per_s"], level0["pages_per_s"])),
            "",
            "",
        ),
    ]
    t = tmap["no full-size request where a sized one is allowed"]
    out.append(
        (
            "full-size requests where a sized one is allowed (service and requests runs)",
            str(t["value"]),
            "",
            "",
            "0",
            _met(t["met"]),
        )
    )
    return out


def overlap_rows(r: dict[str, Any], tmap: dict[str, dict[str, Any]]) -> list[Row]:
    out: list[Row] = []
    slow = _get(r, "slow_hosts")
    if slow:
        t = tmap["slow hosts: K tasks ≥ 0.9× one task from a zero-latency host"]
        out.append(
            (
                f"slow hosts: {slow['hosts']} tasks from {slow['hosts']} hosts at "
                f"{slow['latency_ms']:g} ms, aggregate pages/s",
                _fmt(slow["aggregate_pages_per_s"]),
                f"one task, zero-latency host {_fmt(slow['baseline_pages_per_s'])}",
                _fmt(t["value"]),
                "≥ 0.9",
                _met(t["met"]),
            )
        )
        last = slow["slow_rounds"][-1]
        ceiling = slow.get("download_ceiling_pages_per_s")
        out.append(
            (
                "slow hosts: download ceiling (tasks at once × per-host limit / fetch time "
                "per page)",
                _fmt(ceiling),
                f"{last.get('fetch_ms_per_page')} ms per page ({_methods(last)}); tasks ended "
                f"after {', '.join(f'{w:.1f}' for w in last['task_wall_s'])} s",
                _fmt(_ratio(slow["aggregate_pages_per_s"], ceiling)),
                "",
                "",
            )
        )
        per_host = (last.get("pipeline") or {}).get("per_host_concurrency")
        most = max(last["max_requests_at_once_per_host"], default=None)
        out.append(
            (
                "slow hosts: most requests at once to one host",
                str(most),
                f"fetch.per_host_concurrency {per_host}; worker.concurrency "
                f"{slow.get('worker_concurrency')}, {slow.get('inference_threads')} inference "
                f"thread(s) per process, {len(last['worker_pids'])} processes used",
                "",
                f"≤ {per_host}",
                _met(None if most is None or per_host is None else most <= per_host),
            )
        )
    small = _get(r, "small_behind_big")
    if small:
        t = tmap["one-page task behind a big one ≤ 2× on an idle worker"]
        big = small["big_task"]
        out.append(
            (
                "one-page task: time to result behind a big task (median)",
                _fmt(small["behind_big_median_s"], 3, " s"),
                f"idle worker {_fmt(small['idle_median_s'], 3, ' s')}; "
                f"{small['behind_big_counted']}/{small['samples']} submitted while the "
                f"{big['pages']}-page task ran, which was still running at the end of "
                f"{small.get('big_still_running_after', '?')}",
                _fmt(t["value"]),
                "≤ 2",
                _met(t["met"]),
            )
        )
    return out


def cpu_table(r: dict[str, Any]) -> list[str]:
    cpu = r.get("cpu_ms_per_unit") or {}
    if not cpu:
        return []
    groups = ["bench", "worker", "gunicorn", "nginx", "redis"]
    lines = [
        "",
        "## CPU time per unit of work (ms, by process)",
        "",
        "`bench` is the benchmark's own process: the raw model loop, the seed-style loop, or",
        "(in service phases) the IIIF image server and the polling client.",
        "",
        "| Phase | per | " + " | ".join(groups) + " | total |",
        "| --- | --- | " + " | ".join("---" for _ in groups) + " | --- |",
    ]
    for phase, row in cpu.items():
        values = " | ".join(f"{row[g]:.2f}" if g in row else "—" for g in groups)
        lines.append(f"| {phase} | {row['unit']} | {values} | {row['total']:.2f} |")
    return lines


def stage_table(r: dict[str, Any]) -> list[str]:
    """Decode and inference CPU per page, service against both raw baselines (medians of the
    rounds). The service's decode (and fetch) CPU is the worker's own count (its loading
    threads' CPU time); the rest of the worker's CPU is inference plus the task's bookkeeping."""
    cpu = r.get("cpu_ms_per_unit") or {}
    rows: list[str] = []

    def median(values: list[float]) -> float | None:
        return sorted(values)[len(values) // 2] if values else None

    best = _get(r, "raw", "best_backend")
    infer = median([v["bench"] for k, v in cpu.items() if k.startswith(f"raw {best} round")])
    if infer is not None:
        rows.append(
            f"| raw inference only ({best}, 1 process) | — | — | {infer:.2f} | {infer:.2f} |"
        )
    e2e = _get(r, "raw_e2e")
    if e2e and "decode_cpu_ms_per_page" in e2e:
        d, i = e2e["decode_cpu_ms_per_page"], e2e["inference_cpu_ms_per_page"]
        rows.append(
            f"| raw end to end ({e2e['processes']} processes) | — | {d:.2f} | {i:.2f} "
            f"| {d + i:.2f} |"
        )
    service = []
    for n, run in enumerate(_get(r, "service", "negotiated", "rounds") or [], start=1):
        timings, worker = run.get("worker_timings") or {}, _get(cpu, f"service round {n}", "worker")
        if "decode_cpu_s" in timings and worker is not None and run["pages"]:
            fetch = timings["fetch_cpu_s"] / run["pages"] * 1000
            decode = timings["decode_cpu_s"] / run["pages"] * 1000
            service.append((fetch, decode, worker - fetch - decode, worker))
    if service:
        f, d, i, w = (median([x[k] for x in service]) for k in range(4))
        rows.append(
            f"| service (worker process) | {f:.2f} | {d:.2f} "
            f"| {i:.2f} (+ task bookkeeping) | {w:.2f} |"
        )
    if not rows:
        return []
    return [
        "",
        "## Decode and inference: CPU ms per page (medians of the rounds)",
        "",
        f"Limit on this machine: raw {'inference only' if limit_here(r) == 'gpu' else 'end to end'}"
        " (on a CPU, decoding and inference share the cores; on a GPU, decoding runs beside it).",
        "",
        "| Pipeline | fetch | decode + shrink | inference | total |",
        "| --- | --- | --- | --- | --- |",
        *rows,
    ]


def markdown(r: dict[str, Any]) -> str:
    meta = r.get("meta", {})
    git = meta.get("git", {})
    lines = [
        f"# Scriptorium benchmark — {meta.get('started_at', '')}",
        "",
        f"Machine: {meta.get('cpus')} CPUs ({meta.get('cpu_model')}), "
        f"{meta.get('memory_gib')} GiB, GPU: {meta.get('gpu', 'none')}; "
        f"git {git.get('commit')}{' (dirty)' if git.get('dirty') else ''}; "
        f"model {_get(r, 'meta', 'model', 'name')} "
        f"({(_get(r, 'meta', 'model', 'sha256') or '')[:12]}); "
        f"entry point: {_get(r, 'stack', 'entry_point') or '—'}; "
        f"{_get(r, 'setup', 'pages')} pages, "
        f"{_get(r, 'setup', 'page_sizes_px')} px, image-server latency "
        f"{_get(r, 'setup', 'latency_ms')} ms.",
        "",
        "| Figure | Value | Baseline (same run) | Ratio | Target | Met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows(r)]
    lines += stage_table(r)
    lines += profile_api.summary_lines(r.get("profile"))
    lines += cpu_table(r)
    lines += vectorize.markdown(r.get("vectorize") or {})
    lines += [
        "",
        "## Load during the run",
        "",
        "| Phase | s | load avg start→end | machine busy % | other processes (cores) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for p in meta.get("load_by_phase", []):
        lines.append(
            f"| {p['phase']} | {p['seconds']} | {p['load_start']:.2f} → {p['load_end']:.2f}"
            f" | {p['machine_busy_pct']:.0f} | {p['foreign_cpu_cores']:.2f} |"
        )
    busy = meta.get("busy_foreign_processes_at_start") or []
    lines += [
        "",
        "Busy processes outside the benchmark at start: "
        + ("; ".join(f"`{b}`" for b in busy) if busy else "none"),
    ]
    notes = [f"- {k}: {v}" for k, v in (r.get("stack") or {}).items()]
    if notes:
        lines += ["", "## Stack", "", *notes]
    skipped = r.get("skipped") or []
    lines += ["", "## Skipped", ""]
    lines += [f"- {s['part']}: {s['reason']}" for s in skipped] or ["- nothing"]
    return "\n".join(lines) + "\n"


HISTORY_COLUMNS = (
    "started_at",
    "commit",
    "run",
    "pages",
    "service_pages_per_s",
    "service_vs_raw_end_to_end",
    "service_vs_raw_inference_only",
    "noop_vs_celery_ping",
    "status_vs_healthz",
    "slow_hosts_vs_one_fast_task",
    "small_behind_big_vs_idle",
)


def history_row(r: dict[str, Any], run: str) -> dict[str, str]:
    """The headline ratios of one run, a line of history.csv."""
    service = _get(r, "service", "negotiated", "pages_per_s")
    values = {
        "service_pages_per_s": service,
        "service_vs_raw_end_to_end": _ratio(service, _get(r, "raw_e2e", "pages_per_s")),
        "service_vs_raw_inference_only": _ratio(service, _get(r, "raw", "pages_per_s")),
        "noop_vs_celery_ping": _get(r, "overhead", "ratio_median"),
        "status_vs_healthz": _get(r, "status_load", "ratio_rps"),
        "slow_hosts_vs_one_fast_task": _get(r, "slow_hosts", "ratio"),
        "small_behind_big_vs_idle": _get(r, "small_behind_big", "ratio"),
    }
    git = _get(r, "meta", "git") or {}
    return {
        "started_at": _get(r, "meta", "started_at") or "",
        "commit": f"{git.get('commit') or ''}{'+dirty' if git.get('dirty') else ''}",
        "run": run,
        "pages": str(_get(r, "setup", "pages") or ""),
        **{k: "" if v is None else f"{v:.3f}" for k, v in values.items()},
    }


def append_history(path: Path, row: dict[str, str]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=HISTORY_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def write(r: dict[str, Any], out_dir: Path, stem: str, latest: bool = True) -> dict[str, Path]:
    """A whole run with the configured worker becomes `latest.*` (`latest-gpu.*`); any other
    run (quick, some parts, another concurrency) keeps its files in the git-ignored tmp/. Every
    run adds its headline ratios to history.csv: git history holds the older `latest.*`."""
    r["targets"] = targets(r)
    if latest:
        name, folder = ("latest-gpu" if stem.startswith("gpu") else "latest"), out_dir
    else:
        name, folder = stem, out_dir / "tmp"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / f"{name}.json", "md": folder / f"{name}.md"}
    paths["json"].write_text(json.dumps(r, indent=2, default=str) + "\n")
    paths["md"].write_text(markdown(r))
    append_history(out_dir / "history.csv", history_row(r, stem))
    paths["history"] = out_dir / "history.csv"
    return paths
