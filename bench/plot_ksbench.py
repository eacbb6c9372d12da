#!/usr/bin/env python3
"""Plots a ksbench CSV: speedup over the best of cuBLAS dense and bmm, one point per pattern.

    python3 bench/plot_ksbench.py bench/results/h100-ksbench.csv bench/results/h100-ksbench.png

One panel per dtype; per batch size, the patterns sorted by speedup (as in the paper's figure),
for the best fused kernel alone and for the autotuned pick among fused tiles, dense and bmm. The
pick's ratio is the CSV's `speedup`: the pick and the best baseline timed again, independently of
the timings that chose it, so noise can put it below 1. Also prints
a table per dtype and batch: median and worst speedup of the autotuned pick, of the best fused
tile, and of the rule's pick (what KsFactorForwardCuda runs without autotuning, with weights
grouped at load time: DefaultKernelChoice; in CSVs without `rule_ms`, the rule's tile), and where
the CSV has it, of the rule's pick on the interchange weights alone (`rule_interchange_ms`).
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    header = ""
    rows = []
    with open(path) as f:
        lines = []
        for line in f:
            if line.startswith("#"):
                header = line[1:].strip()
            else:
                lines.append(line)
        for row in csv.DictReader(lines):
            if row["baseline_ms"] and row["dispatched_ms"] and row["best_fused_ms"] and row["speedup"] != "nan":
                rows.append(row)
    return header, rows


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def print_table(rows, dtypes, batches):
    # rule_ms: what runs without tuning (DefaultKernelChoice); older CSVs: the rule's tile.
    rule_key = "rule_ms" if rows and "rule_ms" in rows[0] else "rule_fused_ms"
    rule_name = "rule pick" if rule_key == "rule_ms" else "rule tile"
    # rule_interchange_ms: the same pick on the interchange weights (no packing), where recorded.
    interchange = bool(rows) and "rule_interchange_ms" in rows[0]
    print("| dtype | batch | autotuned: median | best fused tile: median / worst / patterns below 1 "
          f"| {rule_name}: median / worst / patterns below 1 "
          + ("| rule pick, interchange weights: median / worst / patterns below 1 " if interchange else "")
          + "| autotuned: median % of floor |")
    print("| --- | --- | --- | --- | --- | --- |" + (" --- |" if interchange else ""))
    for dtype in dtypes:
        for batch in batches:
            sel = [r for r in rows if r["dtype"] == dtype and int(r["batch"]) == batch]
            base = [float(r["baseline_ms"]) for r in sel]
            tuned = [float(r["speedup"]) for r in sel]  # re-timed pick over re-timed baseline
            fused = [b / float(r["best_fused_ms"]) for b, r in zip(base, sel)]
            rule = [b / float(r[rule_key]) for b, r in zip(base, sel) if r[rule_key]]
            floor = [float(r["pct_floor"]) for r in sel]
            columns = [rule]
            if interchange:
                columns.append(
                    [b / float(r["rule_interchange_ms"]) for b, r in zip(base, sel) if r["rule_interchange_ms"]])
            print(f"| {dtype} | {batch} | {median(tuned):.2f}x "
                  f"| {median(fused):.2f}x / {min(fused):.2f}x / {sum(v < 1 for v in fused)} of {len(fused)} "
                  + "".join(f"| {median(c):.2f}x / {min(c):.2f}x / {sum(v < 1 for v in c)} of {len(c)} "
                            if c else "| n/a " for c in columns)
                  + f"| {median(floor):.1f}% |")


def main(csv_path, png_path):
    header, rows = load(csv_path)
    dtypes = sorted({r["dtype"] for r in rows}, key=lambda d: d != "float32")
    batches = sorted({int(r["batch"]) for r in rows})
    print_table(rows, dtypes, batches)
    fig, axes = plt.subplots(1, len(dtypes), figsize=(6.5 * len(dtypes), 4.8), squeeze=False, sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, dtype in zip(axes[0], dtypes):
        for k, batch in enumerate(batches):
            sel = [r for r in rows if r["dtype"] == dtype and int(r["batch"]) == batch]
            fused = sorted(float(r["baseline_ms"]) / float(r["best_fused_ms"]) for r in sel)
            dispatched = sorted(float(r["speedup"]) for r in sel)
            x = [i / max(len(sel) - 1, 1) for i in range(len(sel))]
            color = colors[k % len(colors)]
            ax.plot(x, dispatched, "-", color=color, label=f"batch {batch}: autotuned pick")
            ax.plot(x, fused, ":", color=color, label=f"batch {batch}: best fused kernel")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_title(f"{dtype}: speedup over best(cuBLAS dense, bmm)")
        ax.set_xlabel("patterns, sorted by speedup (fraction)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("speedup (×)")
    axes[0][-1].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"ksbench — {header}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: plot_ksbench.py RESULTS.csv PLOT.png")
    main(sys.argv[1], sys.argv[2])
