"""``squeezer info``: an artifact's manifest and per-layer table, read without TVM or torch."""

from __future__ import annotations

from pathlib import Path

from squeezer.artifact import ArtifactContents


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}P"


def _shape(s) -> str:
    return "x".join(str(d) for d in s) if s else "-"


def info_tables(path: str | Path, contents: ArtifactContents) -> list:
    """Rich tables: the manifest summary, the per-layer table and, for a quantized model with
    operators left in float, those operators."""
    from rich.table import Table

    m = contents.manifest
    summary = m.get("summary", {})
    t = Table(title=f"{path}", show_header=False)
    t.add_column("field")
    t.add_column("value")
    target = m.get("target", {})
    rows = [
        ("squeezer / TVM", f"{m.get('squeezer_version')} / {m.get('tvm_version')}"),
        ("target", f"{target.get('kind')} {target.get('key')} (mcpu {target.get('mcpu')})"),
        ("threads", str(m.get("threads"))),
        ("source", " ".join(f"{k}={v}" for k, v in m.get("source", {}).items())),
        ("inputs", ", ".join(f"{i['name']}: {i['dtype']}[{_shape(i['shape'])}]"
                             for i in m.get("inputs", []))),
        ("outputs", ", ".join(f"{o['name']}: {o['dtype']}[{_shape(o['shape'])}]"
                              for o in m.get("outputs", []))),
        ("parameters", f"{summary.get('params', 0):,} ({_human(summary.get('param_bytes', 0))}B)"),
        ("FLOPs", _human(summary.get("flops", 0))),
        ("artifact bytes", f"{Path(path).stat().st_size:,}"),
        ("tuning", _tuning(m.get("tuning") or {})),
        ("verified", "no" if not m.get("verified") else ", ".join(
            f"{k}: max abs {v['max_abs']:.2g}" for k, v in m["verified"].items())),
        ("created", str(m.get("created"))),
    ]
    for k, v in rows:
        t.add_row(k, v)

    layers = Table(title="layers")
    for col in ("#", "operator", "inputs", "output", "params", "bytes", "FLOPs"):
        layers.add_column(col, justify="right" if col in ("#", "params", "bytes", "FLOPs")
                          else "left")
    for i, r in enumerate(m.get("layers", [])):
        layers.add_row(str(i), r["op"], " ".join(_shape(s) for s in r["inputs"]),
                       _shape(r["output"]), f"{r['params']:,}", _human(r["bytes"]),
                       _human(r["flops"]))
    from squeezer.float_report import float_fallback_table

    fallback = float_fallback_table(m.get("float_fallback") or [])
    tables = [t, layers] + ([fallback] if fallback is not None else [])
    if "vta" in m:
        from squeezer.vta_compile import cpu_fallback_table, vta_layers_table

        tables += [x for x in (vta_layers_table(m["vta"]),
                               cpu_fallback_table(m.get("cpu_fallback") or [])) if x is not None]
    return tables


def _tuning(t: dict) -> str:
    kernels = t.get("kernels", [])
    if not kernels:
        return "default schedules (no records)"
    tuned = sum(1 for k in kernels if k.get("tuned"))
    return (f"{tuned}/{len(kernels)} kernels from records ({t.get('target_key')}), "
            f"{t.get('coverage', 0.0):.0%} of the estimated time")
