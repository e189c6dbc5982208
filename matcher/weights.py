"""Model weights: what we use, where it lives, and whether it is the right file.

Every weights file the deep backends load is listed in :data:`MANIFEST` with its
download URL, SHA-256, size, purpose and licence.  Files live under
``Settings.resolved_weights_dir`` (``MATCHER_WEIGHTS_DIR``, default
``data_dir/weights``)::

    weights/
      sam_vit_b_01ec64.pth
      open_clip/ViT-B-32/laion2b_s34b_b79k/open_clip_pytorch_model.bin
      open_clip/ViT-B-32-quickgelu/openai/ViT-B-32.pt
      ultralytics/rtdetr-l.pt
      ultralytics/yolov8s-worldv2.pt

Nothing here downloads implicitly.  :func:`resolve` returns a local file or
raises :class:`MissingWeightsError` whose message names the file, the directory
searched and the two ways to get it (``matcher models fetch NAME`` or copying
the file there).  :func:`fetch` is the only code that touches the network.

Checksums.  SHA-256 values are pinned where they are published or well known
(the SAM checkpoints, OpenAI's CLIP ViT-B/32 whose URL embeds its SHA-256).
For files whose checksum is not pinned (``sha256=None``: the LAION open_clip
checkpoint and the Ultralytics assets) :func:`fetch` computes the SHA-256,
prints it and asks for it to be recorded here; :func:`resolve` then only checks
that the file exists.  Verifying 375 MB-2.5 GB on every start is slow, so the
digest is cached in a sidecar ``<file>.sha256.json`` keyed by the file's size
and modification time; if the sidecar cannot be written (read-only directory)
the file is simply hashed again next time.

User-supplied checkpoints (``MATCHER_SAM_CHECKPOINT``, ``MATCHER_CLIP_CHECKPOINT``,
``MATCHER_DETECTOR_CHECKPOINT``) bypass the manifest: the file must exist, and
its SHA-256 (cached the same way) goes into the backend's id so results from two
different checkpoints are never mixed.

Command line (until ``matcher models`` is wired in the CLI)::

    python -m matcher.weights list
    python -m matcher.weights fetch sam:vit_b
    python -m matcher.weights verify sam:vit_b
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_SIDECAR_SUFFIX = ".sha256.json"


@dataclass(frozen=True)
class WeightSpec:
    """One weights file: where it comes from, how to check it, what it is for."""

    name: str  # manifest key, used by ``matcher models fetch NAME``
    filename: str
    url: str | None  # None: no known download source, the file must be copied in
    sha256: str | None  # None: not pinned; fetch computes and prints it
    size_hint: str  # human-readable, e.g. "375 MB"
    purpose: str
    licence: str
    subdir: str = ""  # relative to the weights directory
    size_bytes: int | None = None  # exact size when known (progress bars only, never used to reject a file)
    override_env: str | None = None  # environment variable that points at a user-supplied file instead
    # Files that must sit beside ``filename`` (a Hugging Face model folder: config, tokenizer, processor);
    # fetched from the same URL folder as ``url`` and checked by :func:`resolve_weights`.
    companions: tuple[str, ...] = ()

    def path_in(self, weights_dir: Path) -> Path:
        base = Path(weights_dir)
        return base / self.subdir / self.filename if self.subdir else base / self.filename


@dataclass(frozen=True)
class ResolvedWeights:
    """A local weights file ready to load, and how it was found."""

    name: str
    path: Path
    sha256: str | None  # verified (manifest) or computed (custom); None when unpinned and not custom
    custom: bool  # True when supplied by the user instead of the manifest file

    @property
    def id_suffix(self) -> str:
        """Appended to backend ids for custom checkpoints so two checkpoints never share an id."""
        return f"@{self.sha256[:12]}" if self.custom and self.sha256 else ""


_SAM_LICENCE = "Apache-2.0 (Meta, segment-anything)"
_ULTRA_LICENCE = "AGPL-3.0 (Ultralytics; commercial use needs an Ultralytics licence)"
_ULTRA_RELEASE = "https://github.com/ultralytics/assets/releases/download/v8.4.0"  # what ultralytics 8.4 itself fetches

MANIFEST: dict[str, WeightSpec] = {
    spec.name: spec
    for spec in (
        WeightSpec(
            name="sam:vit_b",
            filename="sam_vit_b_01ec64.pth",
            url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
            sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            size_hint="375 MB",
            size_bytes=375_042_383,
            purpose="Segment Anything ViT-B: box-prompted object masks (segmenter 'sam', sam_model=vit_b)",
            licence=_SAM_LICENCE,
            override_env="MATCHER_SAM_CHECKPOINT",
        ),
        WeightSpec(
            name="sam:vit_l",
            filename="sam_vit_l_0b3195.pth",
            url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
            sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            size_hint="1.25 GB",
            purpose="Segment Anything ViT-L (segmenter 'sam', sam_model=vit_l)",
            licence=_SAM_LICENCE,
            override_env="MATCHER_SAM_CHECKPOINT",
        ),
        WeightSpec(
            name="sam:vit_h",
            filename="sam_vit_h_4b8939.pth",
            url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
            sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            size_hint="2.56 GB",
            size_bytes=2_564_550_879,
            purpose="Segment Anything ViT-H (segmenter 'sam', sam_model=vit_h)",
            licence=_SAM_LICENCE,
            override_env="MATCHER_SAM_CHECKPOINT",
        ),
        WeightSpec(
            name="open_clip:ViT-B-32:laion2b_s34b_b79k",
            filename="open_clip_pytorch_model.bin",
            url="https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/resolve/main/open_clip_pytorch_model.bin",
            sha256=None,
            size_hint="605 MB",
            subdir="open_clip/ViT-B-32/laion2b_s34b_b79k",
            purpose="OpenCLIP ViT-B/32 trained on LAION-2B: image embeddings (embedder 'open_clip', the default deep model)",
            licence="MIT (OpenCLIP); trained on LAION-2B",
            override_env="MATCHER_CLIP_CHECKPOINT",
        ),
        WeightSpec(
            name="open_clip:ViT-B-32-quickgelu:openai",
            filename="ViT-B-32.pt",
            url="https://openaipublic.azureedge.net/clip/models/"
            "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
            sha256="40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
            size_hint="338 MB",
            subdir="open_clip/ViT-B-32-quickgelu/openai",
            purpose="OpenAI CLIP ViT-B/32 (TorchScript): text embeddings of YOLO-World prompts, the encoder it was trained with",
            licence="MIT (OpenAI CLIP)",
        ),
        WeightSpec(
            name="rtdetr-l",
            filename="rtdetr-l.pt",
            url=f"{_ULTRA_RELEASE}/rtdetr-l.pt",
            sha256=None,
            size_hint="63 MB",
            subdir="ultralytics",
            purpose="RT-DETR-l, COCO 80 classes: furniture boxes in room scenes (detector 'rtdetr')",
            licence=_ULTRA_LICENCE,
            override_env="MATCHER_DETECTOR_CHECKPOINT",
        ),
        WeightSpec(
            name="yolov8s-worldv2",
            filename="yolov8s-worldv2.pt",
            url=f"{_ULTRA_RELEASE}/yolov8s-worldv2.pt",
            sha256=None,
            size_hint="25 MB",
            subdir="ultralytics",
            purpose="YOLO-World v2 small: open-vocabulary boxes from category prompts (detector 'yoloworld')",
            licence=_ULTRA_LICENCE,
            override_env="MATCHER_DETECTOR_CHECKPOINT",
        ),
        WeightSpec(
            name="clipseg:CIDAS/clipseg-rd64-refined",
            filename="model.safetensors",
            url="https://huggingface.co/CIDAS/clipseg-rd64-refined/resolve/main/model.safetensors",
            sha256=None,
            size_hint="603 MB",
            subdir="clipseg/CIDAS/clipseg-rd64-refined",
            purpose="CLIPSeg (CLIP ViT-B/16 + a 64-channel decoder): free-text prompted masks (`matcher segment "
                    "--backend clipseg`)",
            licence="Apache-2.0 (CIDAS, transformers CLIPSeg)",
            override_env="MATCHER_CLIPSEG_DIR",
            companions=("config.json", "preprocessor_config.json", "tokenizer_config.json", "special_tokens_map.json",
                        "vocab.json", "merges.txt"),
        ),
    )
}


class UnknownWeightsError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "unknown weights"


class MissingWeightsError(RuntimeError):
    """A weights file is not on disk.  The message says which, where, and how to get it."""

    def __init__(self, spec: WeightSpec | None, path: Path, *, reason: str | None = None) -> None:
        self.spec = spec
        self.path = Path(path)
        if reason is not None:
            message = reason
        else:
            assert spec is not None
            how = []
            if spec.url:
                how.append(f"run `matcher models fetch {spec.name}` (downloads {spec.size_hint} from {spec.url})")
            how.append(f"copy the file to {self.path}")
            if spec.override_env:
                how.append(f"set {spec.override_env} to a local checkpoint file")
            message = (
                f"missing model weights {spec.name!r} ({spec.purpose}): file {spec.filename!r} not found in "
                f"{self.path.parent}. To get it: " + ", or ".join(how) + "."
            )
        super().__init__(message)


class UntrustedWeightsError(RuntimeError):
    """A pickled checkpoint (loading it can run code) whose sha256 nobody vouched for."""

    def __init__(self, path: Path, digest: str) -> None:
        self.path, self.digest = path, digest
        super().__init__(
            f"refusing to load {path}: it is a pickled checkpoint, which can run code when loaded, and its sha256 "
            f"{digest} is neither pinned in the weights manifest nor listed in MATCHER_TRUSTED_WEIGHTS. If you trust "
            f"this file, add its sha256 there (e.g. MATCHER_TRUSTED_WEIGHTS='[\"{digest}\"]').")


def require_trusted(path: Path, trusted: Iterable[str]) -> str:
    """The sha256 of ``path`` if it is one of ``trusted`` (manifest pins, operator-trusted digests);
    else :class:`UntrustedWeightsError`."""
    digest = file_sha256(path)
    if digest.lower() not in {d.lower() for d in trusted if d}:
        raise UntrustedWeightsError(Path(path), digest)
    return digest


class WeightsChecksumError(RuntimeError):
    """A weights file exists but its SHA-256 is not the pinned one."""

    def __init__(self, path: Path | str, expected: str, actual: str, name: str | None = None) -> None:
        self.path, self.expected, self.actual = path, expected, actual
        fix = f"delete it and run `matcher models fetch {name}`" if name else "delete it and download it again"
        super().__init__(
            f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}. "
            f"The file is corrupt, truncated or a different version; {fix}."
        )


# --- manifest lookup -----------------------------------------------------------------------------------------------


def weights_dir_of(settings_or_dir: Any) -> Path:
    """The weights directory from a ``Settings`` (``resolved_weights_dir``) or a plain path."""
    if isinstance(settings_or_dir, (str, os.PathLike)):
        return Path(settings_or_dir)
    resolved = getattr(settings_or_dir, "resolved_weights_dir", None)
    if resolved is not None:
        return Path(resolved)
    explicit = getattr(settings_or_dir, "weights_dir", None)
    if explicit is not None:
        return Path(explicit)
    return Path(settings_or_dir.data_dir) / "weights"


def open_clip_weights_name(model_name: str, pretrained: str) -> str:
    return f"open_clip:{model_name}:{pretrained}"


def _dynamic_open_clip_spec(name: str) -> WeightSpec:
    """A spec for an open_clip model/tag pair not in the manifest, from open_clip's own pretrained table.

    The download URL is derived from the tag's Hugging Face repository (or plain URL); the checksum is not
    pinned.  Unknown tags (e.g. a locally trained model) get no URL: the file must be copied in.
    """
    _, model_name, tag = name.split(":", 2)
    url: str | None = None
    filename = "open_clip_pytorch_model.bin"
    try:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(model_name, tag) or {}
    except Exception:  # pragma: no cover - open_clip missing or broken: no URL, the message still says where to copy
        cfg = {}
    hub = cfg.get("hf_hub") or ""
    if hub:
        # open_clip writes "org/repo/" (default file) or "org/repo/filename".
        if hub.endswith("/"):
            repo, file_part = hub.rstrip("/"), ""
        else:
            repo, file_part = hub.rpartition("/")[0], hub.rpartition("/")[2]
        filename = file_part or filename
        url = f"https://huggingface.co/{repo}/resolve/main/{filename}"
    elif cfg.get("url"):
        url = cfg["url"]
        filename = url.rsplit("/", 1)[-1]
    return WeightSpec(
        name=name,
        filename=filename,
        url=url,
        sha256=None,
        size_hint="unknown size",
        subdir=f"open_clip/{model_name}/{tag}",
        purpose=f"OpenCLIP {model_name} ({tag}) image/text embeddings",
        licence="see the model card",
        override_env="MATCHER_CLIP_CHECKPOINT",
    )


def get_spec(name: str | WeightSpec) -> WeightSpec:
    if isinstance(name, WeightSpec):
        return name
    if name in MANIFEST:
        return MANIFEST[name]
    if name.startswith("open_clip:") and name.count(":") == 2:
        return _dynamic_open_clip_spec(name)
    raise UnknownWeightsError(f"no weights named {name!r}; known: {', '.join(sorted(MANIFEST))}")


# --- hashing and verification ----------------------------------------------------------------------------------------


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + _SIDECAR_SUFFIX)


def _read_cached_digest(path: Path, st: os.stat_result) -> str | None:
    try:
        data = json.loads(_sidecar(path).read_text())
    except (OSError, ValueError):
        return None
    if data.get("size") == st.st_size and data.get("mtime_ns") == st.st_mtime_ns and isinstance(data.get("sha256"), str):
        return data["sha256"]
    return None


def _write_cached_digest(path: Path, st: os.stat_result, digest: str) -> None:
    record = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    try:
        tmp = _sidecar(path).with_name(_sidecar(path).name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, _sidecar(path))
    except OSError:  # read-only directory: no cache, hash again next time
        log.debug("could not write checksum cache next to %s", path)


def hash_file(path: Path) -> str:
    """SHA-256 of a file, always read from disk (no cache)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path, *, use_cache: bool = True) -> str:
    """SHA-256 of a file, cached in ``<file>.sha256.json`` keyed by size and modification time."""
    path = Path(path)
    st = path.stat()
    if use_cache and (cached := _read_cached_digest(path, st)) is not None:
        return cached
    digest = hash_file(path)
    if use_cache:
        _write_cached_digest(path, st, digest)
    return digest


def verify(path: Path, sha256: str, *, name: str | None = None, use_cache: bool = True) -> str:
    """Check ``path`` against ``sha256``; returns the digest or raises :class:`WeightsChecksumError`."""
    actual = file_sha256(path, use_cache=use_cache)
    if actual.lower() != sha256.lower():
        raise WeightsChecksumError(Path(path), sha256.lower(), actual, name)
    return actual


# --- resolution ------------------------------------------------------------------------------------------------------


def resolve_weights(name: str | WeightSpec, settings: Any, *, override: str | os.PathLike | None = None) -> ResolvedWeights:
    """Find the local file for ``name`` (or the user's ``override`` file) and check it.

    ``override`` is a user-supplied checkpoint (from ``MATCHER_*_CHECKPOINT``); it must exist and its
    SHA-256 is computed (cached) so that backend ids can tell checkpoints apart.
    """
    try:
        spec = get_spec(name)
    except UnknownWeightsError:
        if not override:
            raise
        # A user checkpoint for an architecture the manifest does not list (e.g. a fine-tuned variant).
        spec = WeightSpec(name=str(name), filename=Path(override).name, url=None, sha256=None, size_hint="",
                          purpose=f"user-supplied checkpoint for {name}", licence="user-supplied")
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            source = f" (set by {spec.override_env})" if spec.override_env else ""
            raise MissingWeightsError(
                spec, path,
                reason=f"custom checkpoint for {spec.name!r} not found: {path}{source}. Point it at an existing file, "
                f"or unset it to use the standard weights ({spec.filename} in {weights_dir_of(settings)}).",
            )
        return ResolvedWeights(spec.name, path.resolve(), file_sha256(path), custom=True)
    path = spec.path_in(weights_dir_of(settings))
    if not path.is_file():
        raise MissingWeightsError(spec, path)
    missing = [name for name in spec.companions if not (path.parent / name).is_file()]
    if missing:
        raise MissingWeightsError(spec, path, reason=(
            f"model weights {spec.name!r} in {path.parent} are incomplete: {', '.join(missing)} missing beside "
            f"{spec.filename}. Run `matcher models fetch {spec.name}` or copy the whole model folder there."))
    digest = verify(path, spec.sha256, name=spec.name) if spec.sha256 else None
    return ResolvedWeights(spec.name, path, digest, custom=False)


def resolve(name: str | WeightSpec, settings: Any, *, override: str | os.PathLike | None = None) -> Path:
    """The local, verified file for ``name``; raises :class:`MissingWeightsError` / :class:`WeightsChecksumError`."""
    return resolve_weights(name, settings, override=override).path


# --- download --------------------------------------------------------------------------------------------------------


def fetch(name: str | WeightSpec, settings: Any, *, force: bool = False, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``name`` into the weights directory, verify it and move it into place atomically.

    An existing file that verifies is kept (unless ``force``); one that does not is replaced.  When the
    manifest pins no checksum the computed SHA-256 is printed so it can be recorded.
    """
    spec = get_spec(name)
    dest = spec.path_in(weights_dir_of(settings))
    for companion in spec.companions:  # small files first: a folder is usable only once the big file lands
        _fetch_companion(spec, companion, dest.parent, force=force, timeout=timeout)
    if dest.is_file() and not force:
        if spec.sha256 is None:
            log.info("%s already present at %s", spec.name, dest)
            return dest
        try:
            verify(dest, spec.sha256, name=spec.name)
            log.info("%s already present and verified at %s", spec.name, dest)
            return dest
        except WeightsChecksumError as exc:
            log.warning("%s; downloading again", exc)
    if not spec.url:
        raise MissingWeightsError(
            spec, dest, reason=f"no download source is known for {spec.name!r}; copy {spec.filename} to {dest}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        request = urllib.request.Request(spec.url, headers={"User-Agent": "matcher-weights/1"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length") if hasattr(response, "headers") else None
            total = int(length) if length and length.isdigit() else spec.size_bytes
            bar = _progress(total, spec.name, enabled=progress)
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
            finally:
                bar.close()
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if spec.sha256 and digest != spec.sha256.lower():
            raise WeightsChecksumError(f"the download from {spec.url}", spec.sha256.lower(), digest, spec.name)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_cached_digest(dest, dest.stat(), digest)
    if spec.sha256 is None:
        print(
            f"{spec.name}: downloaded {dest} with sha256 {digest} (not pinned in matcher/weights.py MANIFEST; "
            "record it there so later downloads are verified)",
            file=sys.stderr,
        )
    else:
        log.info("%s verified (sha256 %s) at %s", spec.name, digest, dest)
    return dest


def _fetch_companion(spec: WeightSpec, filename: str, folder: Path, *, force: bool, timeout: float) -> None:
    """One of a model folder's small files (config, tokenizer), from the URL folder of the spec's main file."""
    dest = folder / filename
    if dest.is_file() and not force:
        return
    if not spec.url:
        raise MissingWeightsError(spec, dest, reason=f"no download source is known for {spec.name!r}; copy {filename} "
                                  f"to {dest}")
    url = spec.url.rsplit("/", 1)[0] + "/" + filename
    folder.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(url, headers={"User-Agent": "matcher-weights/1"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data = response.read()
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{filename}.", suffix=".part")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp_name, dest)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int | None, desc: str, *, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return _NoBar()
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr)


# --- listing ---------------------------------------------------------------------------------------------------------


def status(settings: Any, names: Iterable[str] | None = None) -> list[tuple[WeightSpec, Path, bool]]:
    """``(spec, expected path, present)`` for each manifest entry (no hashing)."""
    wd = weights_dir_of(settings)
    out = []
    for name in names or MANIFEST:
        spec = get_spec(name)
        path = spec.path_in(wd)
        out.append((spec, path, path.is_file()))
    return out


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - thin CLI, exercised by hand
    import argparse

    from .settings import get_settings

    parser = argparse.ArgumentParser(prog="python -m matcher.weights", description="Model weights manager")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    for cmd in ("fetch", "verify"):
        p = sub.add_parser(cmd)
        p.add_argument("names", nargs="+")
        if cmd == "fetch":
            p.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    settings = get_settings()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cmd == "list":
        for spec, path, present in status(settings):
            mark = "ok     " if present else "missing"
            print(f"{mark} {spec.name:40s} {spec.size_hint:>8s}  {path}\n        {spec.purpose} [{spec.licence}]")
        return 0
    rc = 0
    for name in args.names:
        try:
            if args.cmd == "fetch":
                print(fetch(name, settings, force=args.force))
            else:
                print(f"{name}: ok ({resolve(name, settings)})")
        except (MissingWeightsError, WeightsChecksumError, UnknownWeightsError) as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            rc = 1
    return rc


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
