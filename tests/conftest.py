import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.utils.cpp_extension import get_default_build_root

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same random state, so a run here is a run in CI."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _latency_cache_apart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Latency tables that trials, searches and comparisons build by default are cached under a
    folder of the session (subprocesses inherit it), not in the user's ``~/.cache``; torch's
    compiled kernels, which also follow ``XDG_CACHE_HOME``, stay where they are built."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_EXTENSIONS_DIR", os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield
