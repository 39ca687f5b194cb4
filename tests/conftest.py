"""Suite-wide setup: the broker fixtures plugin and markers not yet in pyproject."""

import pytest

pytest_plugins = ["tests.support.fixtures"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "smoke: fast checks that each real broker is reachable")
