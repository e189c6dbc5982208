"""`matcher layers` on the first N scenes of a bench data set, with the annotated boxes, and the checks a user
would make: layer order, the PSD re-read by psd-tools, GIMP's view of it, composite error and time per photo.

    .venv/bin/python scripts/layers_scenes.py ../shared/bench/furniture-dev --scenes 3 --min-objects 3 --out /tmp/layers

Layers carry skus when the configured database holds an indexed catalog (MATCHER_DATA_DIR / DATABASE_URL);
each scene's folder gets `gimp.png`, the PSD as GIMP flattens it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from matcher.layers import GimpUnavailableError, gimp_render  # noqa: E402
from matcher.settings import Settings  # noqa: E402
from matcher.take_apart import LayersRequest, take_apart  # noqa: E402
from matcher.types import Box  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--min-objects", type=int, default=1, help="Only scenes with at least this many objects.")
    parser.add_argument("--no-match", action="store_true", help="Do not look up skus.")
    args = parser.parse_args()
    coco = json.loads((args.dataset / "scenes" / "instances.json").read_text())
    settings = Settings()
    rows = []
    boxes_of: dict[int, list[Box]] = {}
    for ann in coco["annotations"]:
        boxes_of.setdefault(ann["image_id"], []).append(Box.from_xywh(*ann["bbox"]))
    chosen = [img for img in coco["images"] if len(boxes_of.get(img["id"], [])) >= args.min_objects][: args.scenes]
    for image in chosen:
        boxes = tuple(boxes_of[image["id"]])
        out = args.out / Path(image["file_name"]).stem
        start = time.perf_counter()
        result = take_apart(args.dataset / image["file_name"], out, settings,
                            LayersRequest(boxes=boxes, match=not args.no_match))
        seconds = time.perf_counter() - start
        try:
            gimp_layers = gimp_render(out / "layers.psd", out / "gimp.png")
        except GimpUnavailableError as exc:
            gimp_layers = f"n/a ({exc})"
        rows.append((image["file_name"], result, seconds, gimp_layers))
    print("| photo | layers, back to front | composite MAE (0-255) | PSD re-read | GIMP layers | seconds |")
    print("|---|---|---|---|---|---|")
    for name, result, seconds, gimp_layers in rows:
        order = ", ".join(e["name"] for e in result.manifest["layers"])
        check = "ok" if not result.psd_problems else "; ".join(result.psd_problems)
        print(f"| {name} | {order} | {result.composite_error:.2f} | {check} | {gimp_layers} | {seconds:.1f} |")
    stages = {k: sum(r.timings.get(k, 0.0) for _, r, _, _ in rows) / len(rows) for k in rows[0][1].timings}
    print("\nmean seconds per stage: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
    return 0 if all(not r.psd_problems for _, r, _, _ in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
