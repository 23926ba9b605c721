"""Graphviz rendering of rewritten graphs, with the matched regions highlighted."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from painnfx.rewriter.fusions import FUSED_NODES

from .usage import write_text

PALETTE = ["#fde0dd", "#d0e6f7", "#e5f5e0", "#fff3bf", "#ead7f4", "#ffe5cc"]
FUSION_COLORS = ["#f4a261", "#e9c46a", "#2a9d8f", "#e76f51"]
#: fused node name -> fill colour, one colour per fusion of the registry
FUSED = {node: FUSION_COLORS[sorted(set(FUSED_NODES.values())).index(fusion) % len(FUSION_COLORS)]
         for node, fusion in FUSED_NODES.items()}


def _label(row) -> str:
    if row["op"] == "placeholder":
        return row["name"]
    if row["op"] == "get_attr":
        return f"const {row['name']}"
    if row["op"] == "output":
        return "output"
    return f"{row['target']}\\n{row['name']}"


def to_dot(table: list, regions: dict, title: str, hide_parameters: bool = True) -> str:
    """DOT source: ``regions`` maps node name -> region id (coloured by id)."""
    lines = [f'digraph "{title}" {{', "  rankdir=TB;", '  node [shape=box, fontsize=9, style=filled, fillcolor="white"];',
             f'  labelloc="t"; label="{title}";']
    hidden = {r["name"] for r in table if hide_parameters and r["op"] == "placeholder" and r["name"].startswith(("p_", "b_", "c_"))}
    for row in table:
        if row["name"] in hidden:
            continue
        color = FUSED.get(row["target"])
        if color is None and row["name"] in regions:
            color = PALETTE[regions[row["name"]] % len(PALETTE)]
        shape = "ellipse" if row["op"] in ("placeholder", "output") else "box"
        pen = ', penwidth=2' if row["target"] in FUSED else ""
        lines.append(f'  "{row["name"]}" [label="{_label(row)}", shape={shape}, fillcolor="{color or "white"}"{pen}];')
    for row in table:
        for src in row["inputs"]:
            if src not in hidden and row["name"] not in hidden:
                lines.append(f'  "{src}" -> "{row["name"]}";')
    lines.append("}")
    return "\n".join(lines)


def regions_of(report) -> dict:
    out = {}
    k = 0
    for p in report.passes:
        for m in p.matches:
            if "region" in m:
                for name in m["region"]:
                    out.setdefault(name, k)
                k += 1
    return out


def write_graphs(report, stem: Path, formats=("svg",)) -> list[Path]:
    """Write STEM_before.dot / STEM_after.dot and, if the ``dot`` program exists, rendered files."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    regions = regions_of(report)
    for tag, table, reg in (("before", report.table_before, regions), ("after", report.table_after, {})):
        dot_path = stem.parent / f"{stem.name}_{tag}.dot"
        write_text(dot_path, to_dot(table, reg, f"{report.model}: {tag} rewriting"))
        written.append(dot_path)
        exe = shutil.which("dot")
        for fmt in formats if exe else ():
            out = dot_path.with_suffix(f".{fmt}")
            subprocess.run([exe, f"-T{fmt}", str(dot_path), "-o", str(out)], check=True, timeout=120)
            written.append(out)
    return written
