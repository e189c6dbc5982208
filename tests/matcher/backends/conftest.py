"""Backend tests: tiny models on one torch thread."""

from tests.torch_support import one_torch_thread  # noqa: F401 - autouse for this folder
