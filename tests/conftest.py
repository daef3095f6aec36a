import os
import warnings

import pytest
import torch

# Tests run on 2 cores next to nothing else in CI; keep torch from oversubscribing.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    # pycocotools 2.0.11 + numpy 2.x: every mask decode warns about __array__(copy=...).
    warnings.filterwarnings("ignore", message=".*__array__ implementation doesn't accept a copy keyword.*")
