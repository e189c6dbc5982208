"""The weights manager: clear errors for missing files, checksum verification and its cache, offline fetch."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from matcher import weights
from matcher.settings import Settings
from matcher.weights import MissingWeightsError, WeightsChecksumError, WeightSpec

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", weights_dir=tmp_path / "weights")


def _spec(tmp_path: Path, payload: bytes, *, sha: str | None = "auto", url: str | None = None) -> WeightSpec:
    digest = hashlib.sha256(payload).hexdigest() if sha == "auto" else sha
    return WeightSpec(
        name="test:blob", filename="blob.bin", url=url, sha256=digest, size_hint="1 KB",
        purpose="a test file", licence="none", subdir="test",
    )


def test_manifest_entries_are_complete():
    assert weights.MANIFEST["sam:vit_b"].sha256 == "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"
    assert weights.MANIFEST["sam:vit_b"].filename == "sam_vit_b_01ec64.pth"
    for name in ("sam:vit_b", "open_clip:ViT-B-32:laion2b_s34b_b79k", "rtdetr-l", "yolov8s-worldv2",
                 "open_clip:ViT-B-32-quickgelu:openai"):
        spec = weights.MANIFEST[name]
        assert spec.name == name and spec.url and spec.purpose and spec.licence and spec.size_hint
        assert spec.sha256 is None or len(spec.sha256) == 64
    clip = weights.MANIFEST["open_clip:ViT-B-32:laion2b_s34b_b79k"]
    assert clip.path_in(Path("/w")) == Path("/w/open_clip/ViT-B-32/laion2b_s34b_b79k/open_clip_pytorch_model.bin")


def test_missing_file_message_names_file_directory_and_fetch_command(settings: Settings):
    with pytest.raises(MissingWeightsError) as info:
        weights.resolve("sam:vit_b", settings)
    message = str(info.value)
    assert "sam_vit_b_01ec64.pth" in message
    assert str(settings.resolved_weights_dir) in message
    assert "matcher models fetch sam:vit_b" in message
    assert "MATCHER_SAM_CHECKPOINT" in message
    assert info.value.path == settings.resolved_weights_dir / "sam_vit_b_01ec64.pth"


def test_unknown_name_lists_known_names(settings: Settings):
    with pytest.raises(weights.UnknownWeightsError) as info:
        weights.resolve("no-such-model", settings)
    assert "sam:vit_b" in str(info.value)


def test_checksum_mismatch_raises(tmp_path: Path, settings: Settings):
    spec = _spec(tmp_path, b"expected bytes")
    path = spec.path_in(settings.resolved_weights_dir)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"other bytes")
    with pytest.raises(WeightsChecksumError) as info:
        weights.resolve(spec, settings)
    assert spec.sha256 in str(info.value) and "matcher models fetch test:blob" in str(info.value)


def test_correct_checksum_passes_and_is_cached(tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch):
    payload = os.urandom(4096)
    spec = _spec(tmp_path, payload)
    path = spec.path_in(settings.resolved_weights_dir)
    path.parent.mkdir(parents=True)
    path.write_bytes(payload)

    assert weights.resolve(spec, settings) == path
    sidecar = path.with_name(path.name + ".sha256.json")
    record = json.loads(sidecar.read_text())
    assert record["sha256"] == spec.sha256 and record["size"] == len(payload)

    calls = []
    real = weights.hash_file
    monkeypatch.setattr(weights, "hash_file", lambda p: calls.append(p) or real(p))
    assert weights.resolve(spec, settings) == path
    assert calls == []  # served from the size+mtime cache

    # Same size, new content and mtime: the cache no longer applies and the mismatch is caught.
    path.write_bytes(os.urandom(4096))
    os.utime(path, ns=(record["mtime_ns"] + 10**9, record["mtime_ns"] + 10**9))
    with pytest.raises(WeightsChecksumError):
        weights.resolve(spec, settings)
    assert calls == [path]


def test_verify_function(tmp_path: Path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    good = hashlib.sha256(b"abc").hexdigest()
    assert weights.verify(path, good.upper()) == good
    with pytest.raises(WeightsChecksumError):
        weights.verify(path, "0" * 64)


def test_unpinned_checksum_only_requires_the_file(tmp_path: Path, settings: Settings):
    spec = _spec(tmp_path, b"", sha=None)
    with pytest.raises(MissingWeightsError):
        weights.resolve(spec, settings)
    path = spec.path_in(settings.resolved_weights_dir)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"anything")
    resolved = weights.resolve_weights(spec, settings)
    assert resolved.path == path and resolved.sha256 is None and not resolved.custom and resolved.id_suffix == ""


def test_user_checkpoint_override(tmp_path: Path, settings: Settings):
    custom = tmp_path / "my_sam.pth"
    custom.write_bytes(b"fine-tuned")
    resolved = weights.resolve_weights("sam:vit_b", settings, override=custom)
    assert resolved.custom and resolved.path == custom.resolve()
    assert resolved.id_suffix == "@" + hashlib.sha256(b"fine-tuned").hexdigest()[:12]
    with pytest.raises(MissingWeightsError) as info:
        weights.resolve_weights("sam:vit_b", settings, override=tmp_path / "nope.pth")
    assert "nope.pth" in str(info.value) and "MATCHER_SAM_CHECKPOINT" in str(info.value)
    # An architecture the manifest does not know is fine when the user names the file.
    assert weights.resolve_weights("sam:custom_arch", settings, override=custom).custom


def test_fetch_downloads_verifies_and_renames_atomically(tmp_path: Path, settings: Settings):
    payload = os.urandom(3 * 1024 * 1024 + 17)
    source = tmp_path / "source.bin"
    source.write_bytes(payload)
    spec = _spec(tmp_path, payload, url=source.as_uri())  # file:// URL: the same urllib path, no network
    dest = weights.fetch(spec, settings, progress=False)
    assert dest == spec.path_in(settings.resolved_weights_dir) and dest.read_bytes() == payload
    assert not [p for p in dest.parent.iterdir() if p.name.endswith(".part")]
    assert weights.resolve(spec, settings) == dest

    bad = replace(spec, name="test:bad", filename="bad.bin", sha256="0" * 64)
    with pytest.raises(WeightsChecksumError):
        weights.fetch(bad, settings, progress=False)
    assert not bad.path_in(settings.resolved_weights_dir).exists()
    assert not [p for p in dest.parent.iterdir() if p.name.endswith(".part")]


def test_fetch_prints_checksum_when_not_pinned(tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture):
    source = tmp_path / "source.bin"
    source.write_bytes(b"unpinned")
    spec = _spec(tmp_path, b"", sha=None, url=source.as_uri())
    weights.fetch(spec, settings, progress=False)
    assert hashlib.sha256(b"unpinned").hexdigest() in capsys.readouterr().err


def test_fetch_without_url_explains(tmp_path: Path, settings: Settings):
    spec = _spec(tmp_path, b"x", url=None)
    with pytest.raises(MissingWeightsError, match="copy blob.bin"):
        weights.fetch(spec, settings, progress=False)


def test_status_lists_manifest(settings: Settings):
    rows = weights.status(settings)
    assert {spec.name for spec, _, _ in rows} == set(weights.MANIFEST)
    assert not any(present for _, _, present in rows)


def test_other_open_clip_tags_get_a_derived_spec(settings: Settings):
    pytest.importorskip("open_clip")
    spec = weights.get_spec("open_clip:ViT-B-16:laion2b_s34b_b88k")
    assert spec.url == "https://huggingface.co/laion/CLIP-ViT-B-16-laion2B-s34B-b88K/resolve/main/open_clip_pytorch_model.bin"
    assert spec.sha256 is None and spec.override_env == "MATCHER_CLIP_CHECKPOINT"
    assert spec.path_in(Path("/w")) == Path("/w/open_clip/ViT-B-16/laion2b_s34b_b88k/open_clip_pytorch_model.bin")
    with pytest.raises(MissingWeightsError, match="matcher models fetch open_clip:ViT-B-16:laion2b_s34b_b88k"):
        weights.resolve(spec.name, settings)


def test_a_model_folder_is_fetched_with_its_companions_and_checked_whole(tmp_path: Path, settings: Settings):
    source = tmp_path / "hub" / "org" / "model"
    source.mkdir(parents=True)
    (source / "model.safetensors").write_bytes(b"weights")
    (source / "config.json").write_text("{}")
    (source / "vocab.json").write_text("{}")
    spec = WeightSpec(name="test:folder", filename="model.safetensors", url=(source / "model.safetensors").as_uri(),
                      sha256=None, size_hint="7 B", purpose="a test folder", licence="none", subdir="org/model",
                      companions=("config.json", "vocab.json"))
    dest = weights.fetch(spec, settings, progress=False)
    assert sorted(p.name for p in dest.parent.iterdir() if not p.name.endswith(".sha256.json")) == [
        "config.json", "model.safetensors", "vocab.json"]
    assert weights.resolve(spec, settings) == dest
    (dest.parent / "vocab.json").unlink()
    with pytest.raises(MissingWeightsError, match="incomplete: vocab.json missing.*matcher models fetch test:folder"):
        weights.resolve(spec, settings)


def test_clipseg_is_in_the_manifest_with_its_tokenizer_and_processor_files():
    spec = weights.MANIFEST["clipseg:CIDAS/clipseg-rd64-refined"]
    assert spec.url.endswith("/CIDAS/clipseg-rd64-refined/resolve/main/model.safetensors")
    assert {"config.json", "preprocessor_config.json", "vocab.json", "merges.txt"} <= set(spec.companions)
