import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run faster on one thread, and tests do not fight over the two cores."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
