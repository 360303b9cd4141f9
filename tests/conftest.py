import os

import pytest


def pytest_collection_modifyitems(config, items):
    """Skip `slow` tests unless XBARLLM_SLOW=1 or they were selected with `-m slow`."""
    if os.environ.get("XBARLLM_SLOW", "") not in ("", "0") or "slow" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="long regression: run with XBARLLM_SLOW=1 (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
