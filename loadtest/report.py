#!/usr/bin/env python3
"""Summarise loadtest/bench.sh's measurements (JSON lines) into <out>.json, <out>.md and <out>.svg.

Per scenario and contender: the median and spread over rounds of CPU microseconds per request (per stream
for ai-stream), requests/s, p50/p99 latency and peak RSS; the ratio to the scenario's reference; the derived
figures the targets are stated in (added latency, throughput ratios, added time to first token, stalls,
memory); and a pass/miss line per target.
"""
import argparse
import json
import os
import platform
import statistics
from collections import OrderedDict

REFERENCE = {
    "edge-http": "nginx", "edge-tls": "nginx", "edge-tls-handshake": "nginx", "edge-full": "nginx",
    "edge-key": "nginx", "edge-limit": "nginx", "edge-http-2cpu": "nginx", "edge-full-2cpu": "nginx",
    "ai-overhead": "direct", "ai-throughput": "direct", "ai-stream": "direct", "ai-stream-ramp": "direct",
    "ai-stream-start": "direct",
}
DESCRIPTION = OrderedDict([
    ("edge-http", "keep-alive GET of a small body through each proxy to the mock origin, 32 connections"),
    ("edge-tls", "the same over TLS 1.3 (ECDSA P-256, one certificate for all), keep-alive"),
    ("edge-tls-handshake", "TLS 1.3 with a new connection (full handshake) per request (`Connection: close`)"),
    ("edge-key", "edge-full taken apart: TLS + the API key check (access log off)"),
    ("edge-limit", "TLS + the API key check + a rate limit never reached (access log off)"),
    ("edge-full", "TLS + API key check + rate limit (never triggered) + JSON access log to a file; "
                  "bare-pingora does only TLS and is the floor (work stealing off, as the gateway)"),
    ("edge-http-2cpu", "edge-http with every contender on both CPUs (gateway `threads: 2`, nginx "
                       "`worker_processes 2`, HAProxy `nbthread 2`, bare Pingora 2 threads), wrk with two "
                       "threads and 64 connections, nothing pinned"),
    ("edge-full-2cpu", "edge-full the same way on both CPUs"),
    ("ai-overhead", "non-streaming chat completion at concurrency 1, mock LLM with zero latency; `nginx` here is a "
                    "plain pass-through (no body parsing, no routing, no usage): the floor any proxy adds"),
    ("ai-throughput", "non-streaming chat completion at concurrency 64, mock LLM answering after 20 ms; `nginx` "
                      "as in ai-overhead"),
    ("ai-stream", "512 concurrent streams of 64 chunks 20 ms apart, all sent at once; CPU is per stream; "
                  "`nginx` here is a plain pass-through (`proxy_buffering off`, no body inspection): the floor "
                  "any proxy pays on this machine"),
    ("ai-stream-ramp", "the same 512 streams arriving evenly over 1 s (each lasts 1.3 s, so they overlap)"),
    ("ai-stream-start", "512 one-token streams arriving evenly over 1 s, each on its own client connection: CPU "
                        "per stream is the cost of starting one"),
])


def median(values):
    return statistics.median(values) if values else 0


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summarise(rows):
    groups = OrderedDict()
    for row in rows:
        if row["scenario"] in ("memory", "soak"):
            continue
        groups.setdefault((row["scenario"], row["contender"]), []).append(row)
    summary = []
    for (scenario, contender), values in groups.items():
        cpu = [v["cpu_us"] for v in values]
        entry = {
            "scenario": scenario, "contender": contender, "rounds": len(values),
            "cpu_us_per_request": round(median(cpu), 1), "cpu_spread": [round(min(cpu), 1), round(max(cpu), 1)],
            "peak_rss_kib": max(v["rss_kib"] for v in values),
        }
        if "stream" in values[0]:
            streams = [v["stream"] for v in values]
            conns = [v["upstream_conns_per_1000"] for v in values if "upstream_conns_per_1000" in v]
            entry.update({
                "upstream_conns_per_1000": round(median(conns), 2) if conns else None,
                "ttft_p50_us": median([s["ttft_us"]["p50"] for s in streams]),
                "ttft_p99_us": median([s["ttft_us"]["p99"] for s in streams]),
                "gap_mean_us": median([s["gap_us"]["mean"] for s in streams]),
                "gap_p99_us": median([s["gap_us"]["p99"] for s in streams]),
                "streams": streams[0]["streams"],
                "stall_free_worst_round": min(s["stall_free"] for s in streams),
                "failed_worst_round": max(s["failed"] for s in streams),
                "wall_s": round(median([s["wall_s"] for s in streams]), 2),
            })
            quarters = [s["ttft_by_quarter_us"] for s in streams if s.get("ttft_by_quarter_us")]
            if quarters:
                entry["ttft_p99_by_quarter_us"] = [median([q[i]["p99"] for q in quarters]) for i in range(4)]
        else:
            conns = [v["upstream_conns_per_1000"] for v in values if "upstream_conns_per_1000" in v]
            entry.update({
                "upstream_conns_per_1000": round(median(conns), 2) if conns else None,
                "requests_per_second": round(median([v["rps"] for v in values])),
                "p50_us": median([v["p50_us"] for v in values]),
                "p99_us": median([v["p99_us"] for v in values]),
                "non_2xx": sum(v.get("non_2xx", 0) for v in values),
            })
        summary.append(entry)
    by_key = {(e["scenario"], e["contender"]): e for e in summary}
    for entry in summary:
        ref = by_key.get((entry["scenario"], REFERENCE.get(entry["scenario"])))
        entry["cpu_ratio_to_reference"] = (
            round(entry["cpu_us_per_request"] / ref["cpu_us_per_request"], 2)
            if ref and ref["cpu_us_per_request"] else None)
    return summary, by_key


def derived_figures(by_key, rows):
    d = OrderedDict()
    direct = by_key.get(("ai-overhead", "direct"))
    direct_rounds = [r for r in rows if r["scenario"] == "ai-overhead" and r["contender"] == "direct"]
    for peer in ("gateway", "nginx", "litellm", "portkey"):
        e = by_key.get(("ai-overhead", peer))
        if e and direct:
            d[f"ai-overhead {peer} added p50 us"] = e["p50_us"] - direct["p50_us"]
            d[f"ai-overhead {peer} added p99 us"] = e["p99_us"] - direct["p99_us"]
            # Each round's own difference (the contenders of a round run back to back): at concurrency 1 the
            # p99 of a 5 s window moves by hundreds of microseconds, and this shows by how much.
            peer_rounds = [r for r in rows if r["scenario"] == "ai-overhead" and r["contender"] == peer]
            if len(peer_rounds) == len(direct_rounds) > 1:
                d[f"ai-overhead {peer} added p99 us, each round"] = [
                    p["p99_us"] - q["p99_us"] for p, q in zip(peer_rounds, direct_rounds)]
    gw, nginx = by_key.get(("ai-overhead", "gateway")), by_key.get(("ai-overhead", "nginx"))
    if gw and nginx and nginx["cpu_us_per_request"]:
        d["ai-overhead gateway / nginx pass-through CPU per request"] = \
            round(gw["cpu_us_per_request"] / nginx["cpu_us_per_request"], 2)
    gw = by_key.get(("ai-throughput", "gateway"))
    for peer in ("nginx", "litellm", "portkey"):
        e = by_key.get(("ai-throughput", peer))
        if gw and e and e["requests_per_second"]:
            d[f"ai-throughput gateway / {peer} req/s"] = round(gw["requests_per_second"] / e["requests_per_second"], 1)
    for scenario in ("ai-stream", "ai-stream-ramp", "ai-stream-start"):
        direct = by_key.get((scenario, "direct"))
        for peer in ("gateway", "nginx", "litellm", "portkey"):
            e = by_key.get((scenario, peer))
            if e and direct:
                d[f"{scenario} {peer} added TTFT p50 us"] = e["ttft_p50_us"] - direct["ttft_p50_us"]
                d[f"{scenario} {peer} added TTFT p99 us"] = e["ttft_p99_us"] - direct["ttft_p99_us"]
                d[f"{scenario} {peer} added mean inter-chunk us"] = e["gap_mean_us"] - direct["gap_mean_us"]
                d[f"{scenario} {peer} stall-free streams (worst round)"] = \
                    f"{e['stall_free_worst_round']}/{e['streams']}"
        for peer in ("direct", "nginx", "gateway"):
            e = by_key.get((scenario, peer))
            if e and e.get("ttft_p99_by_quarter_us") and scenario != "ai-stream-start":
                d[f"{scenario} {peer} TTFT p99 by quarter of the streams in starting order, us"] = \
                    e["ttft_p99_by_quarter_us"]
        gw, nginx = by_key.get((scenario, "gateway")), by_key.get((scenario, "nginx"))
        if gw and nginx and nginx["cpu_us_per_request"]:
            d[f"{scenario} gateway / nginx pass-through CPU per stream"] = \
                round(gw["cpu_us_per_request"] / nginx["cpu_us_per_request"], 2)
    full, bare = by_key.get(("edge-full", "gateway")), by_key.get(("edge-full", "bare-pingora"))
    if full and bare:
        d["edge-full gateway / bare Pingora CPU"] = round(full["cpu_us_per_request"] / bare["cpu_us_per_request"], 2)
    # What each edge-full feature costs in each contender: CPU us/request added by each step.
    for peer in ("nginx", "haproxy", "gateway"):
        steps = [by_key.get((s, peer)) for s in ("edge-tls", "edge-key", "edge-limit", "edge-full")]
        if all(steps):
            cpu = [e["cpu_us_per_request"] for e in steps]
            d[f"edge-full steps {peer}: TLS, +key, +limit, +log (CPU us/req)"] = \
                f"{cpu[0]:.1f}, {cpu[1] - cpu[0]:+.1f}, {cpu[2] - cpu[1]:+.1f}, {cpu[3] - cpu[2]:+.1f}"
    for scenario in ("edge-http-2cpu", "edge-full-2cpu"):
        gw = by_key.get((scenario, "gateway"))
        for peer in ("nginx", "haproxy", "bare-pingora"):
            e = by_key.get((scenario, peer))
            if gw and e and e["requests_per_second"]:
                d[f"{scenario} gateway / {peer} req/s"] = round(gw["requests_per_second"] / e["requests_per_second"], 2)
    reuse = [f"{e['scenario']} {e['contender']}: {e['upstream_conns_per_1000']}"
             for e in by_key.values()
             if e.get("upstream_conns_per_1000") is not None and e["upstream_conns_per_1000"] > 5
             and e["contender"] != "direct" and "ttft_p50_us" not in e and e["rounds"] > 1]
    d["contenders opening more than 5 upstream connections per 1,000 requests"] = "; ".join(reuse) or "none"
    for row in rows:
        if row["scenario"] == "memory":
            d[f"memory {row['contender']} idle MiB"] = round(row["idle_kib"] / 1024, 1)
            d[f"memory {row['contender']} at {row['connections']} connections MiB"] = round(row["at_1000_kib"] / 1024, 1)
        if row["scenario"] == "soak":
            samples = row["rss_kib"]
            d["soak seconds"] = row["seconds"]
            d["soak RSS MiB (first, last, max)"] = [round(samples[0] / 1024, 1), round(samples[-1] / 1024, 1),
                                                   round(max(samples) / 1024, 1)]
            half = len(samples) // 2
            d["soak RSS growth over the second half MiB"] = round((samples[-1] - samples[half]) / 1024, 1)
    return d


def targets(by_key, d):
    """Each target: what was measured, whether it is met, and for a missed one what the same run shows about
    why (the floor a plain pass-through or bare Pingora sets on this machine, or where the time goes)."""
    out = []

    def check(name, value, ok, shown, why=""):
        if value is not None:
            out.append({"target": name, "measured": shown, "met": bool(ok), "why": "" if ok else why})

    def cpu(scenario, contender):
        e = by_key.get((scenario, contender))
        return e["cpu_us_per_request"] if e else None

    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else "?"

    full = by_key.get(("edge-full", "gateway"))
    if full and full["cpu_ratio_to_reference"] is not None:
        r = full["cpu_ratio_to_reference"]
        why = (f"the floor is above the target: bare Pingora costs {ratio(cpu('edge-http', 'bare-pingora'), cpu('edge-http', 'nginx'))} "
               f"nginx on edge-http and {ratio(cpu('edge-tls', 'bare-pingora'), cpu('edge-tls', 'nginx'))} on edge-tls; "
               f"the gateway's own share is the next line")
        check("edge-full CPU/request <= 1.3x nginx", r, r <= 1.3, f"{r}x", why)
    r = d.get("edge-full gateway / bare Pingora CPU")
    tls, bare_tls = cpu("edge-tls", "gateway"), cpu("edge-tls", "bare-pingora")
    steps = d.get("edge-full steps gateway: TLS, +key, +limit, +log (CPU us/req)")
    why = (f"before any feature (edge-tls: route match, request id, X-Forwarded-*) the gateway is already "
           f"{ratio(tls, bare_tls)} bare Pingora; CPU us/request for TLS, +key, +limit, +log: {steps} "
           "(PROFILING.md: header inserts through Pingora's case-preserving maps are the largest part)")
    check("edge features <= 1.15x a bare Pingora proxy (edge-full)", r, r is not None and r <= 1.15, f"{r}x", why)
    v = d.get("ai-overhead gateway added p99 us")
    floor = d.get("ai-overhead nginx added p99 us")
    shown = f"{v:.0f} us" if v is not None else ""
    if v is not None and floor is not None:
        shown += f" (nginx pass-through: {floor:.0f} us)"
    each = d.get("ai-overhead gateway added p99 us, each round")
    if v is not None and each:
        shown += "; each round: " + ", ".join(f"{x:.0f}" for x in each) + " us"
    ai_cpu = d.get("ai-overhead gateway / nginx pass-through CPU per request")
    why = (f"a pass-through that reads nothing adds {floor:.0f} us here; the gateway spends {ai_cpu}x its CPU per "
           "request (body parse, guards, routing, usage), and at concurrency 1 each extra wake-up of a thread "
           "shows in the tail" if floor is not None and ai_cpu is not None else "")
    check("ai-overhead added p99 <= 150 us", v, v is not None and v <= 150, shown, why)
    direct = by_key.get(("ai-throughput", "direct"))
    for peer, want in (("litellm", 10), ("portkey", 5)):
        v = d.get(f"ai-throughput gateway / {peer} req/s")
        e = by_key.get(("ai-throughput", peer))
        cap = (round(direct["requests_per_second"] / e["requests_per_second"], 1)
               if direct and e and e["requests_per_second"] else None)
        why = (f"unreachable in this scenario: the mock answers after 20 ms, so even no proxy at all (direct) is only "
               f"{cap}x {peer}" if cap is not None and cap < want else "")
        check(f"ai-throughput >= {want}x {peer}", v, v is not None and v >= want, f"{v}x", why)
    v = d.get("ai-stream-ramp gateway added TTFT p99 us")
    floor = d.get("ai-stream-ramp nginx added TTFT p99 us")
    if v is not None and floor is not None:
        q_gw = d.get("ai-stream-ramp gateway TTFT p99 by quarter of the streams in starting order, us")
        q_ng = d.get("ai-stream-ramp nginx TTFT p99 by quarter of the streams in starting order, us")
        per = d.get("ai-stream-ramp gateway / nginx pass-through CPU per stream")
        why = (f"the tail is the streams that start at the peak: TTFT p99 by quarter of arrivals, gateway {q_gw} us, "
               f"nginx {q_ng} us; the gateway spends {per}x nginx's CPU per stream (masking and usage read every event), "
               "so its one thread is busier when the last streams arrive" if q_gw and q_ng else "")
        check("ai-stream-ramp added TTFT p99 <= nginx pass-through's + 2 ms", v, v <= floor + 2000,
              f"{v:.0f} us (nginx: {floor:.0f} us)", why)
    v = d.get("ai-stream gateway added TTFT p99 us")
    floor = d.get("ai-stream nginx added TTFT p99 us")
    start = by_key.get(("ai-stream-start", "gateway"))
    if v is not None and floor is not None:
        why = ""
        if start:
            total = 512 * start["cpu_us_per_request"] / 1000
            p50 = d.get("ai-stream gateway added TTFT p50 us", 0) / 1000
            why = (f"512 streams x the gateway's CPU per stream start in this run = {total:.0f} ms of one thread's "
                   f"time, against an added TTFT p50 of {p50:.0f} ms: the burst's first tokens wait for the one "
                   "thread to start the streams ahead of them")
            quarters = d.get("ai-stream gateway TTFT p99 by quarter of the streams in starting order, us")
            if quarters:
                why += f" (TTFT p99 by quarter of starting order: {quarters} us)"
        check("ai-stream (burst) added TTFT p99 <= 1.5x nginx pass-through's", v, v <= 1.5 * max(floor, 1),
              f"{v:.0f} us (nginx: {floor:.0f} us)", why)
    if start:
        v = start["cpu_us_per_request"]
        nginx_start = cpu("ai-stream-start", "nginx")
        why = (f"nginx passing the same one-token stream through spends {nginx_start:.0f} us per stream in this run "
               "(mostly the kernel: accept, read, write, close), so the target is below the machine's floor; "
               f"the gateway's excess over nginx is {v - nginx_start:.0f} us" if nginx_start else "")
        check("CPU per stream start <= 100 us (ai-stream-start)", v, v <= 100, f"{v:.0f} us", why)
    v = d.get("ai-stream gateway stall-free streams (worst round)")
    if v:
        done, total = v.split("/")
        check("ai-stream all 512 streams stall-free", v, done == total, v)
    v = d.get("memory gateway idle MiB")
    check("memory idle < 64 MiB", v, v is not None and v < 64, f"{v} MiB")
    for key, value in d.items():
        if key.startswith("memory gateway at "):
            check("memory at 1,000 connections < 200 MiB", value, value < 200, f"{value} MiB")
    v = d.get("soak RSS growth over the second half MiB")
    check("memory flat over the soak (second-half growth < 5 MiB)", v, v is not None and v < 5, f"{v} MiB")
    return out


def svg_chart(summary, path):
    """Horizontal bars: CPU us per request per scenario and contender (ai-stream: per stream, own scale)."""
    colors = {"gateway": "#2b7bb9", "nginx": "#3a9a4a", "haproxy": "#d9a21b", "bare-pingora": "#a0a0a0", "direct": "#d0d0d0",
              "litellm": "#c8553d", "portkey": "#8e5ea2"}
    rows = [e for e in summary]
    scenarios = list(OrderedDict.fromkeys(e["scenario"] for e in rows))
    bar, gap, left, width = 16, 14, 260, 440
    height = 40 + sum(gap + bar * sum(1 for e in rows if e["scenario"] == s) for s in scenarios) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 120}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="10" y="20" font-size="14" font-weight="bold">CPU microseconds per request of the proxy '
             f'process (lower is better; ai-stream: per stream)</text>']
    y = 40
    for s in scenarios:
        entries = [e for e in rows if e["scenario"] == s]
        top = max(e["cpu_us_per_request"] for e in entries) or 1
        y += gap
        parts.append(f'<text x="10" y="{y - 2}" font-weight="bold">{s}</text>')
        for e in entries:
            w = max(1, e["cpu_us_per_request"] / top * width)
            c = colors.get(e["contender"], "#777")
            parts.append(f'<text x="{left - 6}" y="{y + bar - 4}" text-anchor="end">{e["contender"]}</text>')
            parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar - 3}" fill="{c}"/>')
            parts.append(f'<text x="{left + w + 4:.1f}" y="{y + bar - 4}">{e["cpu_us_per_request"]:.1f}</text>')
            y += bar
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def conns_cell(e):
    """Upstream connections opened per 1,000 requests; over 5 means the contender does not reuse them."""
    v = e.get("upstream_conns_per_1000")
    if v is None:
        return ""
    # One round (--quick) counts the connections a contender opens at first; only medians of rounds flag.
    if e["contender"] != "direct" and v > 5 and e["rounds"] > 1:
        return f"**{v} (no reuse?)**"
    return f"{v}"


def markdown(out, summary, d, checks, meta):
    name = os.path.basename(out)
    lines = [f"# Benchmark {name}", "",
             f"{meta['rounds']} round(s) of {meta['duration_s']} s per contender, contenders alternated within each "
             f"round; {meta['machine']['cpus']} CPUs, kernel {meta['machine']['kernel']}; loopback only; whole run "
             f"{meta['elapsed_s']} s. Every proxy runs one thread/worker (the `-2cpu` scenarios: two); the same mock upstreams, bodies, "
             "certificate, TLS 1.3 and keep-alive policy for every contender. CPU is utime+stime of the proxy "
             "process (and its children) over the measured window, divided by completed requests.", ""]
    for scenario, text in DESCRIPTION.items():
        if any(e["scenario"] == scenario for e in summary):
            lines.append(f"- **{scenario}**: {text}; reference `{REFERENCE[scenario]}`.")
    lines += ["", f"![CPU per request]({name}.svg)", "",
              "| scenario | contender | CPU us/req (median, spread) | ratio | req/s | p50 us | p99 us | peak RSS KiB "
              "| upstream conns / 1,000 req |",
              "|---|---|---|---|---|---|---|---|---|"]
    for e in summary:
        if "requests_per_second" not in e:
            continue
        lines.append(f"| {e['scenario']} | {e['contender']} | {e['cpu_us_per_request']:.1f} "
                     f"({e['cpu_spread'][0]:.1f}-{e['cpu_spread'][1]:.1f}) | {e['cpu_ratio_to_reference']} | "
                     f"{e['requests_per_second']} | {e['p50_us']:.0f} | {e['p99_us']:.0f} | {e['peak_rss_kib']} "
                     f"| {conns_cell(e)} |")
    streams = [e for e in summary if "ttft_p50_us" in e]
    if streams:
        lines += ["", "| stream scenario | contender | CPU us/stream | TTFT p50 us | TTFT p99 us | mean gap us | gap p99 us "
                      "| stall-free (worst round) | failed | wall s | upstream conns / 1,000 streams |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for e in streams:
            lines.append(f"| {e['scenario']} | {e['contender']} | {e['cpu_us_per_request']:.0f} | {e['ttft_p50_us']} | {e['ttft_p99_us']} "
                         f"| {e['gap_mean_us']} | {e['gap_p99_us']} | {e['stall_free_worst_round']}/{e['streams']} "
                         f"| {e['failed_worst_round']} | {e['wall_s']} | {e.get('upstream_conns_per_1000') or ''} |")
    if d:
        lines += ["", "| derived figure | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in d.items()]
    if checks:
        lines += ["", "| target | measured | met | what this run shows about a miss |", "|---|---|---|---|"]
        lines += [f"| {c['target']} | {c['measured']} | {'yes' if c['met'] else '**no**'} | {c['why']} |"
                  for c in checks]
    if meta["notes"]:
        lines += ["", "Notes:"] + [f"- {n}" for n in meta["notes"]]
    lines += ["", "Profiling and the fixes measured with this harness: [PROFILING.md](PROFILING.md).", ""]
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines))
    return lines


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("results")
    parser.add_argument("out")
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--duration", type=int, required=True)
    parser.add_argument("--elapsed", type=int, default=0)
    parser.add_argument("--notes", default="[]")
    args = parser.parse_args()
    rows = load(args.results)
    summary, by_key = summarise(rows)
    d = derived_figures(by_key, rows)
    checks = targets(by_key, d)
    meta = {"rounds": args.rounds, "duration_s": args.duration, "elapsed_s": args.elapsed,
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release()}, "notes": json.loads(args.notes)}
    with open(args.out + ".json", "w") as f:
        json.dump({**meta, "results": summary, "derived": d, "targets": checks, "raw": rows}, f, indent=2)
    svg_chart(summary, args.out + ".svg")
    lines = markdown(args.out, summary, d, checks, meta)
    print("\n".join(lines))
    print(f"wrote {args.out}.md, .json and .svg")


if __name__ == "__main__":
    main()
