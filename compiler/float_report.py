"""The operators of a quantized model left in float, as a rich table (compile and info).

``fold_qdq`` records them in the manifest's ``float_fallback`` list; an int8 model that is
slower than expected usually has some, so they are printed rather than left in the JSON.
"""

from __future__ import annotations


def float_fallback_table(entries: list[dict]):
    """A rich ``Table`` of ``{"op", "where", "reason"}`` entries, or None when there are none."""
    if not entries:
        return None
    from rich.table import Table

    t = Table(title=f"{len(entries)} operator(s) left in float (not quantized)")
    for col in ("#", "operator", "where", "reason"):
        t.add_column(col, justify="right" if col == "#" else "left")
    for i, e in enumerate(entries):
        t.add_row(str(i), e.get("op", "?"), e.get("where", "?"), e.get("reason", "?"))
    return t
