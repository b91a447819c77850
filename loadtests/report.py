"""Turns the scenarios' results into the printed summary and the PNG plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain text columns: the first left-aligned, the others right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))
        )

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, cells)])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def _goal(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "n/a"}[met]


def non_200(level: dict[str, Any]) -> int:
    return int(level["errors"] + sum(v for s, v in level["statuses"].items() if s != "200"))


def level_rows(result: dict[str, Any]) -> list[list[Any]]:
    """variant, c, req/s, p50, p99, mean batch, non-200: one row per variant and level."""
    return [
        [
            name,
            level["concurrency"],
            level["throughput_rps"],
            level["p50_ms"],
            level["p99_ms"],
            level.get("mean_batch_size"),
            non_200(level),
        ]
        for name, variant in result["variants"].items()
        for level in variant["levels"]
    ]


def digits_summary(result: dict[str, Any]) -> str:
    ratios = {r["concurrency"]: r for r in result["vs_floor"]}
    rows = []
    for name, variant in result["variants"].items():
        for level in variant["levels"]:
            vs = ratios[level["concurrency"]].get(name, {})
            rows.append(
                [
                    name,
                    level["concurrency"],
                    level["throughput_rps"],
                    level["p50_ms"],
                    level["p99_ms"],
                    level.get("mean_batch_size"),
                    vs.get("throughput"),
                    vs.get("p50"),
                    non_200(level),
                ]
            )
    return "DIGITS (overhead-bound; 1 sample per request)\n" + table(
        [
            "variant",
            "c",
            "req/s",
            "p50 ms",
            "p99 ms",
            "batch",
            "req/s vs floor",
            "p50 vs floor",
            "non-200",
        ],
        rows,
    )


def grpc_summary(result: dict[str, Any]) -> str:
    ok = ("200", "OK", "http 200")
    rows = [
        [
            name,
            level["concurrency"],
            level["throughput_rps"],
            level["p50_ms"],
            level["p99_ms"],
            level.get("mean_batch_size"),
            level["errors"] + sum(v for s, v in level["statuses"].items() if s not in ok),
            level.get("gateway_grpc_ok"),
        ]
        for name, variant in result["variants"].items()
        for level in variant["levels"]
    ]
    verdict = table(
        [
            "",
            "grpc / http req/s",
            "goal",
            "",
            "aio / http",
            "grpc / floor",
            "floor / http",
            "aio floor / http",
        ],
        [
            [
                f"c={r['concurrency']}",
                r["grpc_over_http"]["throughput"],
                r["goal"],
                _goal(r["met"]),
                r.get("grpc_aio_over_http", {}).get("throughput"),
                r["grpc_over_floor"]["throughput"],
                r["floor_over_http"]["throughput"],
                r.get("floor_aio_over_http", {}).get("throughput"),
            ]
            for r in result["ratios"]
        ],
    )
    return "\n\n".join(
        [
            "GRPC vs HTTP (digits, 1 sample per request, one gateway process)",
            table(
                [
                    "variant",
                    "c",
                    "req/s",
                    "p50 ms",
                    "p99 ms",
                    "batch",
                    "errors",
                    "gRPC OK (gateway count)",
                ],
                rows,
            ),
            verdict,
        ]
    )


def observability_summary(result: dict[str, Any]) -> str:
    rows = []
    for mode, compared in result["modes"].items():
        for variant, median in compared["medians"].items():
            goal = compared["ratios"].get(variant, {})
            rows.append(
                [
                    mode,
                    variant,
                    median["throughput_rps"],
                    median["p50_ms"],
                    median["p99_ms"],
                    goal.get("throughput_vs_bare"),
                    goal.get("of_medians"),
                    goal.get("goal"),
                    _goal(goal["met"]) if goal else "",
                ]
            )
    throughput = (
        "OBSERVABILITY COST (digits c=32, alternating rounds; vs bare = median of each "
        "round's ratio)\n"
    ) + table(
        [
            "mode",
            "variant",
            "req/s (median)",
            "p50 ms",
            "p99 ms",
            "vs bare",
            "of medians",
            "goal",
            "",
        ],
        rows,
    )
    cost = result.get("span_cost")
    if not cost:
        return throughput
    if "error" in cost:
        return f"{throughput}\n\nSPAN COST failed: {cost['error']}"
    return "\n\n".join(
        [
            throughput,
            (
                f"SPAN COST (in-process, {cost['spans_per_request']} spans per digits request; "
                f"median of {cost['runs']} runs of {cost['spans_per_run']} spans)\n"
            )
            + table(
                ["recording + OTLP protobuf encoding", "us/span", "vs ours"],
                [
                    ["ours (tracing.py + otlp.py)", cost["ours_us_per_span"], 1.0],
                    [
                        "OpenTelemetry SDK (tracer + encode_spans)",
                        cost["sdk_us_per_span"],
                        cost["sdk_over_ours"],
                    ],
                ],
            ),
        ]
    )


def embedder_summary(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"EMBEDDER skipped: {result['skipped']}"
    limit = result["limit"]
    inproc = table(
        ["in-process batch", "sentences/s", "ms per batch"],
        [[r["batch_size"], r["sentences_per_s"], r["ms_per_batch"]] for r in limit["batch_sizes"]],
    )
    rows = level_rows(result)
    gateway = table(["variant", "c", "sentences/s", "p50 ms", "p99 ms", "batch", "non-200"], rows)
    r = result["ratios"]
    goals = r["goals"]
    headline = (
        f"(a) limit = {limit['limit_sentences_per_s']:.1f} sentences/s (in-process, batch "
        f"{limit['best_batch_size']}); in-process batching gain (best / batch 1) = "
        f"{limit['gain']}"
    )
    ratios = table(
        [f"at c={r['concurrency']}", "value", "goal", ""],
        [
            [
                "b/a (gateway batching / limit)",
                r["b_over_a"],
                ">= 0.8",
                _goal(goals["b_over_a"]["met"]),
            ],
            ["b/c (gateway batching gain)", r["b_over_c"], "", ""],
            [
                "(b/c) / in-process gain",
                r["gain_ratio"],
                ">= 0.8",
                _goal(goals["gain_ratio"]["met"]),
            ],
        ],
    )
    return "\n\n".join(
        ["EMBEDDER (compute-bound; 1 sentence per request)", inproc, gateway, headline, ratios]
    )


def overload_summary(result: dict[str, Any]) -> str:
    cap, unloaded, load, v = (
        result["capacity"],
        result["unloaded"],
        result["open_loop"],
        result["verdict"],
    )
    admitted, shed, rss = v["admitted"], v["shed"], v["rss"]
    during = [s["rss_mib"] for s in result["rss"]["during_mib"]]
    baseline = (
        f"capacity (closed loop c={cap['concurrency']}): {cap['throughput_rps']:.1f} req/s; "
        f"unloaded (closed loop c=1): p50 {unloaded['p50_ms']:.3f} ms, "
        f"p99 {unloaded['p99_ms']:.3f} ms"
    )
    offered = (
        f"open loop: {load['offered_rps']:.0f} req/s offered for {load['duration_s']:g} s "
        f"over {load['connections']} connections: {load['scheduled']} scheduled, "
        f"{load['sent']} sent, {load['not_sent']} not sent (no free connection), "
        f"{load['unanswered']} unanswered\n"
        f"  generator send lag p99 {load['send_lag']['p99_ms']:.3f} ms; gateway metrics: "
        f"mean batch {load.get('mean_batch_size')}, mean queue wait of the admitted "
        f"{load.get('mean_queue_wait_ms')} ms"
    )
    answers = table(
        ["", "count", "p50 ms", "p99 ms", "goal", ""],
        [
            [
                "admitted (200)",
                admitted["count"],
                admitted["p50_ms"],
                admitted["p99_ms"],
                f"p99 <= 2x unloaded (is {admitted['p99_vs_unloaded']}x)",
                _goal(admitted["met"]),
            ],
            [
                "shed (503)",
                shed["count"],
                shed["p50_ms"],
                shed["p99_ms"],
                shed["goal"],
                _goal(shed["met"]),
            ],
            ["deadline (504)", v["deadline_504"], None, None, "", ""],
            ["other statuses", v["other_statuses"], None, None, "", ""],
            ["connection errors", v["errors"], None, None, "", ""],
        ],
    )
    memory = (
        f"gateway RSS: before {rss['before_mib']} MiB, during "
        f"{min(during, default=0)}..{max(during, default=0)} MiB ({len(during)} samples, "
        f"1/s), after {rss['after_mib']} MiB; growth {rss['growth_mib']} MiB "
        f"({rss['goal']}: {_goal(rss['met'])})"
    )
    title = f"OVERLOAD ({result['description'].split(':')[0]})"
    return "\n".join([title, baseline, offered, answers, memory])


def vendor_summary(result: dict[str, Any]) -> str:
    rows = [
        [
            name,
            level["concurrency"],
            level["throughput_rps"],
            level["p50_ms"],
            level["p99_ms"],
            non_200(level),
        ]
        for name, variant in result["variants"].items()
        for level in variant["levels"]
    ]
    v = result["verdict"]
    t, a = v["throughput"], v["added_latency"]
    verdict = table(
        ["", "value", "goal", ""],
        [
            [
                f"gateway req/s at c={t['concurrency']} (direct {t['direct_rps']}, ratio {t['ratio']})",
                t["gateway_rps"],
                t["goal"],
                _goal(t["met"]),
            ],
            [
                f"added latency at c={a['concurrency']}: p50 / p99 ms",
                f"{a['p50_ms']} / {a['p99_ms']}",
                a["goal"],
                _goal(a["met"]),
            ],
        ],
    )
    return "\n\n".join(
        [
            "VENDOR PASSTHROUGH (chat completions, fake vendor, zero latency)",
            table(["variant", "c", "req/s", "p50 ms", "p99 ms", "non-200"], rows),
            verdict,
        ]
    )


def cache_summary(result: dict[str, Any]) -> str:
    rows = [
        [
            name,
            v["levels"][0]["throughput_rps"],
            v["levels"][0]["p50_ms"],
            v["levels"][0]["p99_ms"],
            v["levels"][0]["server_mean_ms"],
        ]
        for name, v in result["variants"].items()
    ]
    v = result["verdict"]
    local = v["local_hit_vs_miss"]
    hit_us, miss_us = local["in_process_us"]
    lines = [
        [
            f"local hit / miss in-process ({hit_us} / {miss_us} us; over HTTP: gateway "
            f"{local['http_server_ratio']}, client p50 {local['client_p50_ratio']})",
            local["ratio"],
            local["goal"],
            _goal(local["met"]),
        ]
    ]
    if "redis_hit_added" in v:
        r = v["redis_hit_added"]
        lines.append(
            [
                f"redis hit - local hit, client p50 ms (gateway's own: {r['server_mean_ms']} ms)",
                r["client_p50_ms"],
                r["goal"],
                _goal(r["met"]),
            ]
        )
    return "\n\n".join(
        [
            "CACHE (digits, closed loop c=1)",
            table(["variant", "req/s", "p50 ms", "p99 ms", "gateway ms/request"], rows),
            table(["", "value", "goal", ""], lines),
        ]
    )


def triton_summary(result: dict[str, Any]) -> str:
    rows = level_rows(result)
    # The goals at c=32: throughput >= 0.8x direct, added p50 <= 0.5 ms.
    verdict = [
        [
            f"{v['variant']} c={v['concurrency']}",
            v["throughput_ratio"],
            v["added_p50_ms"],
            v["added_p99_ms"],
            _goal(
                None
                if v["throughput_ratio"] is None or v["added_p50_ms"] is None
                else v["throughput_ratio"] >= 0.8 and v["added_p50_ms"] <= 0.5
            ),
        ]
        for v in result["vs_direct"]
    ]
    return "\n\n".join(
        [
            "TRITON (digits, v2 binary, 1 sample per request: direct vs through the gateway)",
            table(["variant", "c", "req/s", "p50 ms", "p99 ms", "batch", "non-200"], rows),
            table(
                ["vs direct", "req/s ratio", "added p50 ms", "added p99 ms", ">=0.8x, <=0.5 ms"],
                verdict,
            ),
        ]
    )


SUMMARIES = {
    "observability": observability_summary,
    "cache": cache_summary,
    "digits": digits_summary,
    "grpc": grpc_summary,
    "vendor": vendor_summary,
    "embedder": embedder_summary,
    "overload": overload_summary,
    "triton": triton_summary,
}


def summary(scenarios: dict[str, Any]) -> str:
    parts = []
    for name, result in scenarios.items():
        if "error" in result:
            parts.append(f"{name.upper()} failed: {result['error']}")
        else:
            parts.append(SUMMARIES[name](result))
    return "\n\n".join(parts)


def plot(scenarios: dict[str, Any], path: Path, title: str) -> bool:
    """Latency p50 (solid) and p99 (dashed) vs throughput, one line per variant and
    one panel per closed-loop scenario. False when there is nothing to plot."""
    panels = [(n, r) for n, r in scenarios.items() if "variants" in r]
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    # One colour per variant name in every panel: "gateway" looks the same everywhere.
    names = sorted({v for _, r in panels for v in r["variants"]})
    colors = {name: f"C{i}" for i, name in enumerate(names)}
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), squeeze=False)
    for ax, (name, result) in zip(axes[0], panels):
        for variant, data in result["variants"].items():
            # In concurrency order: the curve a server walks as the load grows.
            levels = sorted(data["levels"], key=lambda r: r["concurrency"])
            x = [r["throughput_rps"] for r in levels]
            color = colors[variant]
            ax.plot(x, [r["p50_ms"] for r in levels], "o-", color=color, label=f"{variant} p50")
            ax.plot(x, [r["p99_ms"] for r in levels], "s--", color=color, label=f"{variant} p99")
            for level in levels:
                ax.annotate(
                    f"c={level['concurrency']}",
                    (level["throughput_rps"], level["p50_ms"]),
                    textcoords="offset points",
                    xytext=(4, -10),
                    fontsize="x-small",
                    color=color,
                )
        if "limit" in result:
            ax.axvline(
                result["limit"]["limit_sentences_per_s"],
                color="grey",
                linestyle=":",
                label="in-process limit",
            )
        ax.set_title(name)
        ax.set_xlabel("throughput (requests/s; 1 sample or sentence per request)")
        ax.set_ylabel("latency (ms)")
        latencies = [
            r[k]
            for v in result["variants"].values()
            for r in v["levels"]
            for k in ("p50_ms", "p99_ms")
            if r[k] > 0
        ]
        if latencies and max(latencies) > 10 * min(latencies):
            # Several decades (1 ms to seconds): log, labelled 20 rather than 2x10^1, the
            # minor ticks at 2 and 5 only so that they stay legible.
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.yaxis.set_minor_formatter(
                FuncFormatter(lambda value, _: f"{value:g}" if f"{value:g}"[0] in "25" else "")
            )
        else:
            ax.set_ylim(bottom=0)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
