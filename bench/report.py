"""From raw samples to the reported figures: medians, ratios against
wireguard-go, the issue's targets with PASS/MISS, the Markdown table and the
JSON file. Everything here is pure except `write`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import stats
from bench.topology import BASELINES, BY_KEY, SUBJECT

MB = 1e6


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    digits: int
    lower_is_better: bool = False


METRICS = (
    Metric("tcp1_gbps", "TCP, 1 stream", "Gbit/s", 2),
    Metric("tcp4_gbps", "TCP, 4 streams", "Gbit/s", 2),
    Metric("udp_delivered_kpps", "UDP delivered, unlimited send", "kpps", 1),
    Metric("udp_link_kpps", "UDP reaching b's kernel (TUN/veth rx), unlimited send", "kpps", 1),
    Metric("udp_sent_kpps", "UDP sent by iperf3, unlimited send", "kpps", 1),
    Metric("udp_loss_pct", "UDP loss, unlimited send", "%", 1, True),
    Metric("udp_sustainable_kpps", "UDP highest rate with < 1 % loss", "kpps", 1),
    Metric("udp_sustainable_loss_pct", "UDP loss at that rate", "%", 2, True),
    Metric("ping_idle_ms", "ping RTT idle, median", "ms", 3, True),
    Metric("ping_idle_p99_ms", "ping RTT idle, 99th percentile", "ms", 3, True),
    Metric("ping_load_ms", "ping RTT under 1 TCP stream, median", "ms", 3, True),
    Metric("ping_load_p99_ms", "ping RTT under 1 TCP stream, 99th pct", "ms", 3, True),
    Metric("first_packet_ms", "first datagram through a fresh tunnel", "ms", 2, True),
    Metric("cpu_daemons_s_per_gb", "CPU, both WireGuard daemons (TCP 1 stream)", "s/GB", 2, True),
    Metric("cpu_sender_s_per_gb", "CPU, sending daemon", "s/GB", 2, True),
    Metric("cpu_receiver_s_per_gb", "CPU, receiving daemon", "s/GB", 2, True),
    Metric("cpu_iperf3_s_per_gb", "CPU, iperf3 client + server", "s/GB", 2, True),
    Metric("cpu_machine_s_per_gb", "CPU, whole machine (/proc/stat)", "s/GB", 2, True),
)
METRIC = {m.key: m for m in METRICS}


def medians(samples: dict[str, dict[str, list[float | None]]]) -> dict[str, dict[str, float]]:
    """config -> metric -> median of the repetitions (metrics never measured are left out)."""
    result: dict[str, dict[str, float]] = {}
    for config, metrics in samples.items():
        result[config] = {}
        for metric, values in metrics.items():
            value = stats.median(values)
            if value is not None:
                result[config][metric] = value
    return result


def baseline(table: dict[str, dict[str, float]]) -> str | None:
    """The configuration ratios are against: current wireguard-go if measured, else Debian's."""
    return next((b for b in BASELINES if b in table), None)


def ratios(table: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """config -> metric -> median(config) / median(baseline), for every other tunnel config."""
    base_key = baseline(table)
    base = table.get(base_key, {}) if base_key else {}
    result: dict[str, dict[str, float]] = {}
    for config, metrics in table.items():
        if config == base_key or not BY_KEY[config].tunnel:
            continue
        result[config] = {}
        for metric, value in metrics.items():
            r = stats.ratio(value, base.get(metric))
            if r is not None:
                result[config][metric] = r
    return result


@dataclass(frozen=True)
class Verdict:
    target: str
    figure: str  # the measured value, as printed
    required: str
    verdict: str  # PASS, MISS, or n/a (not measured)


def _ratio_target(
    text: str,
    metric: str,
    table: dict[str, dict[str, float]],
    at_least: float | None = None,
    at_most: float | None = None,
) -> Verdict:
    base = baseline(table)
    r = stats.ratio(table.get(SUBJECT, {}).get(metric), table.get(base or "", {}).get(metric))
    required = f"≥ {at_least:g}x" if at_least is not None else f"≤ {at_most:g}x"
    if r is None:
        return Verdict(text, "not measured", required, "n/a")
    ok = (at_least is None or r >= at_least) and (at_most is None or r <= at_most)
    return Verdict(text, f"{r:.2f}x", required, "PASS" if ok else "MISS")


def targets(
    table: dict[str, dict[str, float]],
    memory: list[dict[str, Any]] | None,
    soak: dict[str, Any] | None,
) -> list[Verdict]:
    """The targets, judged on this run's medians: throughput and CPU against
    the baseline (current wireguard-go), memory, and the soak."""
    base = BY_KEY[b].label if (b := baseline(table)) else "wg-go"
    result = [
        _ratio_target(f"TCP 1 stream, wgpy↔wgpy / {base}", "tcp1_gbps", table, at_least=2),
        _ratio_target(
            f"CPU s/GB of both daemons (TCP 1 stream), wgpy / {base}",
            "cpu_daemons_s_per_gb",
            table,
            at_most=0.5,
        ),
        _ratio_target(
            f"UDP highest rate with < 1 % loss, wgpy / {base}",
            "udp_sustainable_kpps",
            table,
            at_least=3,
        ),
    ]
    wgpy_memory = next((m for m in memory or [] if m.get("impl") == "wgpy"), None)
    if wgpy_memory is None:
        result.append(Verdict("RSS of wgpy with 1,000 peers", "not measured", "< 100 MB", "n/a"))
    else:
        rss = wgpy_memory["rss_peers_bytes"] / MB
        result.append(
            Verdict(
                f"RSS of wgpy with {wgpy_memory['peers']:,} peers",
                f"{rss:.1f} MB",
                "< 100 MB",
                "PASS" if rss < 100 else "MISS",
            )
        )
    result.append(_soak_target(soak))
    return result


SOAK_FLAT_BYTES = 150_000  # RSS may move this much from minute 1 to minute 20


def _soak_target(soak: dict[str, Any] | None) -> Verdict:
    """RSS flat within 150 KB from minute 1 to the end (minute 20 of a 20-minute soak)."""
    text, required = "RSS of wgpy from minute 1 to the end of the soak", "within 150 KB"
    if not soak:
        return Verdict(text, "not run (--soak)", required, "n/a")
    growth = [soak[role].get("growth_after_warmup") for role in ("sender", "receiver")]
    if any(g is None for g in growth):
        return Verdict(text, "no samples", required, "n/a")
    worst = max(abs(g) for g in growth)
    figure = f"{worst / 1e3:.0f} KB over {soak['seconds']} s ({soak['handshakes_seen']} handshakes)"
    return Verdict(text, figure, required, "PASS" if worst <= SOAK_FLAT_BYTES else "MISS")


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Add medians, ratios and target verdicts to a results document."""
    table = medians(results["samples"])
    results["medians"] = table
    results["ratios"] = ratios(table)
    results["targets"] = [
        asdict(v) for v in targets(table, results.get("memory"), results.get("soak"))
    ]
    return results


# --- Markdown -------------------------------------------------------------------


def fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    """The human-readable report: one table of medians, then targets, handshakes, memory."""
    meta, options = results["meta"], results["options"]
    configs = [BY_KEY[key] for key in options["configs"]]
    table, ratio_table = results["medians"], results["ratios"]
    lines = [
        f"# wgpy benchmark, {meta['started']}",
        "",
        f"{meta['cpu_model']}, {meta['cpus']} CPUs, Linux {meta['kernel']}; "
        f"wgpy {meta['wgpy']['git']}; {meta['wireguard_go']}; {meta['iperf3']}.",
        f"Medians of {options['repetitions']} interleaved repetition(s); TCP runs "
        f"{options['duration']} s, UDP {options['udp_duration']} s with "
        f"{options['udp_len']}-byte payloads; side a sends to side b.",
        "",
    ]
    header = ["measurement", *[c.label for c in configs]]
    base = baseline(table)
    show_ratio = SUBJECT in table and base is not None
    if show_ratio and base is not None:
        header.append(f"wgpy↔wgpy / {BY_KEY[base].label}")
    lines += ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for metric in METRICS:
        values = [table.get(c.key, {}).get(metric.key) for c in configs]
        if all(v is None for v in values):
            continue
        row = [f"{metric.label} ({metric.unit})", *[fmt(v, metric.digits) for v in values]]
        if show_ratio:
            r = ratio_table.get(SUBJECT, {}).get(metric.key)
            row.append("-" if r is None else f"{r:.2f}x")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Targets", "", "| target | figure | required | verdict |", "|---|---|---|---|"]
    for v in results["targets"]:
        lines.append(f"| {v['target']} | {v['figure']} | {v['required']} | **{v['verdict']}** |")
    lines += _handshake_section(results.get("handshake") or {})
    lines += _memory_section(results.get("memory") or [], results.get("soak"))
    lines += _threads_section(results.get("threads") or {}, configs)
    return "\n".join(lines) + "\n"


def _handshake_section(handshake: dict[str, Any]) -> list[str]:
    lines = ["", "## Handshakes", "", "| source | handshakes/s, one core |", "|---|---:|"]
    python = handshake.get("python")
    if python:
        lines.append(
            f"| installed wgpy via its Python API (both sides' work, one thread) "
            f"| {python['handshakes_per_s']:,.0f} |"
        )
    cargo = handshake.get("cargo")
    if cargo and "error" not in cargo:
        lines.append(
            f"| `cargo bench --bench crypto` (Rust core of the working tree) "
            f"| {cargo['handshakes_per_s']:,.0f} |"
        )
    elif cargo:
        lines.append(
            f"| `cargo bench --bench crypto` | not available: {_one_line(cargo['error'])} |"
        )
    else:
        lines.append("| `cargo bench --bench crypto` | not run |")
    return lines


def _memory_section(memory: list[dict[str, Any]], soak: dict[str, Any] | None) -> list[str]:
    lines: list[str] = []
    if memory:
        lines += [
            "",
            "## Memory",
            "",
            "| daemon | RSS, no peers (MB) | RSS, with peers (MB) | peers | per peer (kB) "
            "| `wg setconf` (s) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for m in memory:
            per_peer = m["per_peer_bytes"]
            lines.append(
                f"| {m['impl']} | {m['rss_empty_bytes'] / MB:.1f} | {m['rss_peers_bytes'] / MB:.1f}"
                f" | {m['peers']:,} | {fmt(None if per_peer is None else per_peer / 1e3, 2)}"
                f" | {m['setconf_seconds']:.2f} |"
            )
    if soak:
        lines += [
            "",
            f"Soak: wgpy↔wgpy, TCP both ways for {soak['seconds']} s ({soak['traffic_gb']:.0f} GB),"
            f" {soak['extra_peers']:,} idle peers on side a, {soak['handshakes_seen']} handshakes"
            f" seen; RSS sampled every {soak['interval']:g} s after {soak['warmup_seconds']:.0f} s"
            " of warm-up:",
            "",
            "| daemon | min (MB) | median (MB) | max (MB) | spread |",
            "|---|---:|---:|---:|---:|",
        ]
        for role in ("sender", "receiver"):
            s = soak[role]
            if s["rss_min_bytes"] is None:
                continue
            lines.append(
                f"| {role} | {s['rss_min_bytes'] / MB:.1f} | {s['rss_median_bytes'] / MB:.1f}"
                f" | {s['rss_max_bytes'] / MB:.1f} | {100 * s['spread']:.1f} % |"
            )
    return lines


def _threads_section(threads: dict[str, dict[str, Any]], configs: list[Any]) -> list[str]:
    """Where each daemon's CPU went during the last TCP 1-stream run, by thread name."""
    rows = []
    for config in configs:
        for role, per_thread in (threads.get(config.key) or {}).items():
            if role not in ("sender", "receiver"):
                continue
            busiest = [f"{name} {seconds:.2f}" for name, seconds in per_thread.items() if seconds]
            rows.append(f"| {config.label} | {role} | {', '.join(busiest[:6]) or '-'} |")
    if not rows:
        return []
    return [
        "",
        "## CPU by thread (last TCP 1-stream run, CPU seconds)",
        "",
        "| configuration | daemon | threads |",
        "|---|---|---|",
        *rows,
    ]


def _one_line(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split()).replace("|", "/")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# --- files ----------------------------------------------------------------------


def write(results: dict[str, Any], out_dir: Path, stamp: str) -> tuple[Path, Path]:
    """Write bench-STAMP.json and .md into `out_dir`, and copy them to latest.*."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_text = json.dumps(results, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
    md_text = markdown(results)
    json_path, md_path = out_dir / f"bench-{stamp}.json", out_dir / f"bench-{stamp}.md"
    for path, text in (
        (json_path, json_text),
        (md_path, md_text),
        (out_dir / "latest.json", json_text),
        (out_dir / "latest.md", md_text),
    ):
        path.write_text(text)
    return json_path, md_path
