"""Human-readable output of the scene evaluation: example strips and a markdown report."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from ..codec import encode_png
from ..cutout import composite_for_embedding
from ..imageio import ImageLoadError, load_image

TILE = 160
GREEN, RED, GREY = (40, 170, 60), (200, 50, 50), (128, 128, 128)


def _tile(rgb: np.ndarray, border: tuple[int, int, int]) -> np.ndarray:
    tile = cv2.resize(rgb, (TILE - 8, TILE - 8), interpolation=cv2.INTER_AREA)
    return cv2.copyMakeBorder(tile, 4, 4, 4, 4, cv2.BORDER_CONSTANT, value=border)


def example_strip(obj, true_sku: str, path: Path, image_for_sku: Callable[[str], str | None], top: int = 3) -> None:
    """Query cutout, then the top candidates' catalog photos (green border = the right product)."""
    tiles = [_tile(composite_for_embedding(obj.cutout), GREY)]
    for candidate in obj.candidates[:top]:
        source = image_for_sku(candidate.sku)
        try:
            rgb = load_image(source).rgb if source else np.full((TILE, TILE, 3), 255, np.uint8)
        except ImageLoadError:
            rgb = np.full((TILE, TILE, 3), 255, np.uint8)
        tiles.append(_tile(rgb, GREEN if candidate.sku == true_sku else RED))
    path.write_bytes(encode_png(np.hstack(tiles)))


def write_markdown(report: dict[str, Any], path: Path) -> None:
    lines = [f"# Query-path evaluation: {report['dataset']}", "", f"Scenes: {report['scenes']}; space: `{report['space']}`", ""]
    for key, title in (("gt_boxes", "Ground-truth boxes"), ("detected_boxes", "Detected boxes")):
        section = report.get(key)
        if not section:
            continue
        lines += [f"## {title}", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in section.items()]
        lines.append("")
    if report.get("detection_map"):
        lines += ["## Detection", "", *(f"- {k}: {v}" for k, v in report["detection_map"].items()), ""]
    rerank = report.get("reranker")
    if rerank:
        lines += ["## Re-ranker", "", f"Deployed at eval time: `{rerank['deployed']}`", ""]
        trained = rerank.get("trained_on_split", {})
        held = trained.get("held_out")
        if held:
            lines += [f"Trained on {trained['train_groups']} objects, evaluated on {held['groups']} objects of held-out scenes:", "",
                      "| | recall@1 | recall@5 | recall@10 |", "|---|---|---|---|",
                      f"| cosine only | {held['cosine_recall@1']:.3f} | {held['cosine_recall@5']:.3f} | {held['cosine_recall@10']:.3f} |",
                      f"| re-ranked | {held['reranked_recall@1']:.3f} | {held['reranked_recall@5']:.3f} | {held['reranked_recall@10']:.3f} |",
                      "", f"Lift in recall@1: **{held['lift_recall@1']:+.3f}**", ""]
        elif trained.get("error"):
            lines += [f"Not trained: {trained['error']}", ""]
    lines += ["## Timings per query (seconds)", "", "| stage | p50 | p95 |", "|---|---|---|"]
    lines += [f"| {stage} | {v['p50']} | {v['p95']} |" for stage, v in report.get("timings_s", {}).items()]
    lines.append("")
    if report.get("examples"):
        lines += ["## Examples", "", "Query cutout, then the top 3 candidates (green = the right product).", ""]
        for ex in report["examples"]:
            rel = Path(ex["png"]).relative_to(path.parent) if Path(ex["png"]).is_relative_to(path.parent) else ex["png"]
            lines += [f"**{ex['scene']}**: `{ex['sku']}`", "", f"![example]({rel})", ""]
    path.write_text("\n".join(lines))


def comparison_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per model: recall, category recall, embedding time, index throughput, re-ranker lift."""
    rows = []
    for model, r in report["models"].items():
        split = ((r.get("reranker") or {}).get("trained_on_split") or {})
        check = split.get("split_check") or {}
        lift = (f"{check['lift_recall@1_mean']:+.3f} / {check['lift_recall@1_min']:+.3f}"
                if "lift_recall@1_mean" in check else "-")
        throughput = r["index"]["products_per_s"]
        rows.append([model, f"{r['recall@1']:.3f}", f"{r['recall@5']:.3f}", f"{r['recall@10']:.3f}",
                     f"{r['category_recall@5']:.3f}", f"{r['embed_ms_per_image']:.1f}" if r["embed_ms_per_image"] else "-",
                     f"{throughput:.2f}" if throughput else "already indexed", lift])
    return rows


COMPARISON_HEADER = ["model", "recall@1", "recall@5", "recall@10", "category recall@5", "embed ms/image",
                     "index products/s", "re-ranker lift r@1 (mean / worst split)"]


def write_comparison_markdown(report: dict[str, Any], path: Path) -> None:
    lines = [f"# Embedders compared: {report['dataset']}", "",
             f"Scenes: {report['scenes']}; {report['query_cutouts']} query cutouts (ground-truth boxes, the pipeline's "
             "own masks and mattes), the same for every model; ranking by cosine.", "",
             "| " + " | ".join(COMPARISON_HEADER) + " |", "|" + "---|" * len(COMPARISON_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in comparison_rows(report)]
    path.write_text("\n".join(lines) + "\n")
