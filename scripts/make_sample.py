"""Build the bundled demo sample (``sample/``) from the public-domain part of the bench.

Takes a few room scenes whose every product is BlendSwap-CC-0 (public domain),
those products, and a few more CC-0 products as distractors; writes the same
layout as the bench (catalog/products.jsonl, images, alpha, scenes/instances.json)
plus CREDITS.md.  Run once by a maintainer; the output is committed (< 5 MB).

    python scripts/make_sample.py ../shared/bench/furniture-dev sample
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections import defaultdict
from pathlib import Path

PUBLIC_DOMAIN = "BlendSwap-CC-0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--scenes", type=int, default=5)
    parser.add_argument("--distractors", type=int, default=14)
    args = parser.parse_args()

    products = [json.loads(line) for line in (args.bench / "catalog" / "products.jsonl").open() if line.strip()]
    by_sku = {p["sku"]: p for p in products}
    coco = json.loads((args.bench / "scenes" / "instances.json").read_text())
    annotations = defaultdict(list)
    for ann in coco["annotations"]:
        annotations[ann["image_id"]].append(ann)

    scenes = [img for img in coco["images"]
              if annotations[img["id"]] and all(by_sku[a["sku"]]["library"] == PUBLIC_DOMAIN for a in annotations[img["id"]])
              and len(annotations[img["id"]]) >= 2][: args.scenes]
    wanted = {a["sku"] for img in scenes for a in annotations[img["id"]]}
    extra = [p["sku"] for p in products if p["library"] == PUBLIC_DOMAIN and p["sku"] not in wanted][: args.distractors]
    chosen = [by_sku[s] for s in sorted(wanted | set(extra))]

    if args.out.exists():
        shutil.rmtree(args.out)
    for product in chosen:
        for key in ("image", "alpha"):
            _copy(args.bench, args.out, product[key])
    (args.out / "catalog" / "products.jsonl").write_text("".join(json.dumps(p) + "\n" for p in chosen))
    for img in scenes:
        _copy(args.bench, args.out, img["file_name"])
    subset = dict(coco, images=scenes, annotations=[a for img in scenes for a in annotations[img["id"]]])
    (args.out / "scenes" / "instances.json").write_text(json.dumps(subset))
    credits = ["# Credits", "", "A sample of the furniture bench (rendered from Sweet Home 3D libraries, Debian package",
               "sweethome3d-furniture). Every model here is from BlendSwap-CC-0, in the public domain.", "",
               "| sku | model | creator | license |", "|---|---|---|---|"]
    credits += [f"| {p['sku']} | {p['name']} | {p['creator']} | {p['license']} |" for p in chosen]
    (args.out / "CREDITS.md").write_text("\n".join(credits) + "\n")
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{len(chosen)} products, {len(scenes)} scenes, {size / 1e6:.2f} MB in {args.out}")


def _copy(src_root: Path, dst_root: Path, relative: str) -> None:
    target = dst_root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src_root / relative, target)


if __name__ == "__main__":
    main()
