"""Goals and tables of ``squeezer bench lowbit``: ratios of medians from one run only."""

from __future__ import annotations

from collections.abc import Sequence

from squeezer.bench_sparse_report import DISTURBED, _goal, _ms, _note, _table

# (goal text, section, numerator peer, denominator peer, at least): ratio = num / den per case
GOALS = (
    ("int8 GEMM >= 1.0x onnxruntime MatMulInteger", "gemm", "onnxruntime-int8",
     "squeezer-int8", 1.0),
    ("int8 conv layers >= 3x squeezer fp32 (worst layer)", "conv", "squeezer-fp32",
     "squeezer-int8", 3.0),
    ("binary conv layers >= 10x squeezer fp32 (worst layer)", "conv", "squeezer-fp32",
     "squeezer-binary", 10.0),
    ("int8 MobileNetV2 end to end faster than onnxruntime int8 on the same QDQ model", "e2e",
     "onnxruntime-int8", "squeezer-int8", 1.0),
)
GEMV_SHARE = 0.8

PEERS = {
    "gemm": ("squeezer-int8", "onnxruntime-int8", "squeezer-fp32", "torch-fp32"),
    "conv": ("squeezer-int8", "squeezer-binary", "squeezer-fp32", "torch-fp32"),
    "gemv": ("squeezer-int4", "squeezer-fp32", "torch-fp32"),
    "e2e": ("squeezer-int8", "onnxruntime-int8", "squeezer-own-int8", "squeezer-fp32",
            "onnxruntime-fp32"),
}
RATIOS = {  # (label, numerator, denominator)
    "gemm": (("ort-int/sq", "onnxruntime-int8", "squeezer-int8"),
             ("fp32/int8", "squeezer-fp32", "squeezer-int8")),
    "conv": (("fp32/int8", "squeezer-fp32", "squeezer-int8"),
             ("fp32/binary", "squeezer-fp32", "squeezer-binary"),
             ("torch/int8", "torch-fp32", "squeezer-int8")),
    "gemv": (("fp32/int4", "squeezer-fp32", "squeezer-int4"),),
    "e2e": (("ort-int8/sq", "onnxruntime-int8", "squeezer-int8"),
            ("ort-fp32/sq", "onnxruntime-fp32", "squeezer-int8"),
            ("sq-fp32/sq", "squeezer-fp32", "squeezer-int8")),
}


def _r(c, num: str, den: str) -> float | None:
    return c.ms[num] / c.ms[den] if num in c.ms and den in c.ms else None


def evaluate_goals(cases: Sequence) -> list[dict]:
    goals = []
    for text, section, num, den, at_least in GOALS:
        rows = [(c, _r(c, num, den)) for c in cases if c.section == section]
        timed = [(c, r) for c, r in rows if r is not None]
        if not timed:
            why = "; ".join(f"{c.case}: {_note(c)}" for c, _ in rows) or "no case in this suite"
            goals.append(_goal(text, "", f">= {at_least:g}x", None, None, why))
            continue
        worst, r = min(timed, key=lambda cr: cr[1])
        met = sum(1 for _, x in timed if x >= at_least)
        goals.append(_goal(text, worst.case, f">= {at_least:g}x", r, r >= at_least,
                           f"worst {worst.case}: {num} {worst.ms[num]:.3f} ms / {den} "
                           f"{worst.ms[den]:.3f} ms; {met} of {len(timed)} cases meet it"))
    gemv = [c for c in cases if c.section == "gemv" and "bandwidth_share" in c.info]
    text = f"int4 GEMV >= {GEMV_SHARE:.0%} of the measured memory bandwidth"
    if gemv:
        c = min(gemv, key=lambda c: c.info["bandwidth_share"])
        s = c.info["bandwidth_share"]
        goals.append(_goal(text, c.case, f">= {GEMV_SHARE:.0%}", s, s >= GEMV_SHARE,
                           f"{c.info['int4_gbps']:.1f} GB/s of {c.info['bandwidth_gbps']:.1f}"))
    else:
        goals.append(_goal(text, "", f">= {GEMV_SHARE:.0%}", None, None, "no int4 time"))
    return goals


def tables(cases: Sequence, goals: Sequence[dict], threads: int,
           others_cpu_s: float | None = None, wall_s: float | None = None) -> list:
    out = []
    titles = {"gemm": "int8 GEMM", "conv": "conv layers (batch 1)",
              "gemv": "int4-weight GEMV (batch 1)", "e2e": "end to end"}
    for section, title in titles.items():
        rows = [c for c in cases if c.section == section]
        if not rows:
            continue
        labels = [r[0] for r in RATIOS[section]]
        extra = ["GB/s", "of bw"] if section == "gemv" else []
        t = _table(f"{title}: median ms, {threads} threads; squeezer = squeezer.compile",
                   ["case", *PEERS[section], *labels, *extra, "note"],
                   "ratio > 1: squeezer's low-bit path is faster")
        for c in rows:
            ratios = [_r(c, n, d) for _, n, d in RATIOS[section]]
            cells = ["-" if r is None else f"{r:.2f}x" for r in ratios]
            if section == "gemv":
                g = c.info.get("int4_gbps")
                cells += ["-", "-"] if g is None else [
                    f"{g:.1f}", f"{c.info['bandwidth_share']:.0%}"]
            fb = c.info.get("float_fallback")
            note = _note(c) + (f"; {fb} ops left in float" if fb else "")
            t.add_row(c.case, *(_ms(c, p) for p in PEERS[section]), *cells, note.strip("; "))
        out.append(t)
    caption = ""
    if others_cpu_s is not None and wall_s:
        caption = f"other processes used {others_cpu_s:.1f} CPU-s during this {wall_s:.0f} s run"
        if others_cpu_s > DISTURBED * wall_s:
            caption += ": the machine was not quiet, these numbers are disturbed"
    t = _table("goals (ratios of medians in this run)",
               ["goal", "target", "measured", "status", "detail"], caption)
    for g in goals:
        m = "-" if g["measured"] is None else (
            f"{g['measured']:.0%}" if "%" in g["target"] else f"{g['measured']:.2f}x")
        t.add_row(g["goal"], g["target"], m, g["status"], g["detail"])
    out.append(t)
    return out
