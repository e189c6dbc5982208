"""Starting the review app: the ``streamlit run`` command line and its environment (no Streamlit import)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from matcher.settings import Settings

APP_PATH = Path(__file__).resolve().with_name("app.py")


def launch_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for the app process: the CLI's settings as ``MATCHER_*`` variables.

    The app builds ``Settings()`` from its environment, so it sees exactly what
    the ``matcher review`` command saw (data directory, database, backend, ...).
    """
    env = dict(os.environ if base is None else base)
    for name, value in settings.model_dump(mode="python").items():
        if value is None:
            continue
        if isinstance(value, (list, tuple, dict)):
            text = json.dumps(list(value) if isinstance(value, tuple) else value)
        elif isinstance(value, Path):
            text = str(value.resolve())
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[f"MATCHER_{name.upper()}"] = text
    return env


def launch_command(settings: Settings, *, port: int = 8501, headless: bool = False,
                   address: str | None = None) -> list[str]:
    """``python -m streamlit run ui/app.py`` with the server options for ``matcher review``."""
    upload_mb = max(1, math.ceil(settings.max_upload_bytes / (1024 * 1024)))
    command = [
        sys.executable, "-m", "streamlit", "run", str(APP_PATH),
        "--server.headless", "true" if headless else "false",
        "--server.port", str(int(port)),
        "--server.maxUploadSize", str(upload_mb),
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
    ]
    if address:
        command += ["--server.address", address]
    return command
