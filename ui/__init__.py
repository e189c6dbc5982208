"""The Streamlit review app (``matcher review``).

``ui/app.py`` is the page script; it calls only ``matcher.review`` and
``matcher.service``.  ``ui.launch`` holds what the CLI needs to start it, without importing
Streamlit.
"""

from __future__ import annotations

from .launch import APP_PATH, launch_command, launch_env

__all__ = ["APP_PATH", "launch_command", "launch_env"]
