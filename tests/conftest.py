import os
import warnings

import pytest
import torch

# Tests run on 2 cores next to nothing else in CI; keep torch from oversubscribing.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module's tests: on 2 shared cores two spinning threads can
    make tiny training steps 10-100x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    # pycocotools 2.0.11 + numpy 2.x: every mask decode warns about __array__(copy=...).
    warnings.filterwarnings("ignore", message=".*__array__ implementation doesn't accept a copy keyword.*")
