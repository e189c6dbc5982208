"""Catalog parsing: JSONL (bench layout), CSV and folders; bad rows reported by line."""

import json

import pytest

from matcher.indexing import read_catalog


def test_bench_jsonl_resolves_paths_from_the_data_set_root(bench_dir):
    rows, errors = read_catalog(bench_dir / "catalog" / "products.jsonl")
    assert errors == []
    assert len(rows) == sum(1 for line in (bench_dir / "catalog" / "products.jsonl").open() if line.strip())
    first = rows[0]
    assert first.title and first.category
    assert (bench_dir / "catalog" / "images").as_posix() in first.image
    assert "alpha" in first.attributes and "name" not in first.attributes


def test_bad_rows_are_reported_with_line_numbers(tmp_path):
    lines = [
        json.dumps({"sku": "a", "title": "A", "image": "a.jpg"}),
        "{not json",
        json.dumps({"title": "no sku", "image": "b.jpg"}),
        json.dumps({"sku": "c", "title": "no image"}),
        json.dumps({"sku": "a", "title": "dup", "image": "a2.jpg"}),
        json.dumps(["a", "list"]),
        "",
        json.dumps({"sku": 7, "name": "numeric sku", "image_url": "https://example.invalid/x.jpg", "colour": "red"}),
    ]
    path = tmp_path / "products.jsonl"
    path.write_text("\n".join(lines))
    rows, errors = read_catalog(path)
    assert [r.sku for r in rows] == ["a", "7"]
    assert rows[1].image.startswith("https://") and rows[1].attributes == {"colour": "red"}
    by_line = {e.line: e.reason for e in errors}
    assert set(by_line) == {2, 3, 4, 5, 6}
    assert "invalid JSON" in by_line[2] and "missing sku" in by_line[3]
    assert "missing image" in by_line[4] and "duplicate sku" in by_line[5]


def test_csv_and_folder_catalogs(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "chair.jpg").write_bytes(b"x")
    (tmp_path / "img" / "notes.txt").write_text("ignored")
    csv_path = tmp_path / "products.csv"
    csv_path.write_text("sku,title,category,image,material\nS1,Chair,Office,img/chair.jpg,oak\nS2,Broken,Office,img/x.jpg,a,b\n")
    rows, errors = read_catalog(csv_path)
    assert [(r.sku, r.category, r.attributes) for r in rows] == [("S1", "Office", {"material": "oak"})]
    assert rows[0].image == str(tmp_path / "img" / "chair.jpg")
    assert len(errors) == 1 and errors[0].line == 3

    folder_rows, folder_errors = read_catalog(tmp_path / "img")
    assert [r.sku for r in folder_rows] == ["chair"] and folder_errors == []


def test_spreadsheet_exports_bom_semicolons_and_foreign_encodings(tmp_path):
    (tmp_path / "chair.jpg").write_bytes(b"x")
    excel = tmp_path / "excel.csv"
    excel.write_bytes("\ufeffsku;title;image\nS1;Fauteuil, velours;chair.jpg\n".encode("utf-8"))
    rows, errors = read_catalog(excel)
    assert errors == [] and [(r.sku, r.title) for r in rows] == [("S1", "Fauteuil, velours")]

    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("sku,title,image\nS1,Fauteuil gar\xe7on,chair.jpg\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        read_catalog(latin1)

    jsonl = tmp_path / "mixed.jsonl"
    jsonl.write_bytes(b'{"sku": "S1", "image": "chair.jpg"}\n{"sku": "S2", "title": "gar\xe7on", "image": "chair.jpg"}\n')
    rows, errors = read_catalog(jsonl)
    assert [r.sku for r in rows] == ["S1"]
    assert [(e.line, e.reason) for e in errors] == [(2, "not valid UTF-8 (byte 28 of the line)")]
    assert "\ufffd" not in "".join(r.title for r in rows)
