"""Oracle fixtures: root/tun checks and one tap pair (in its own netns) per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from netns import TapPair, root_skip_reason, tap_pair


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = root_skip_reason()
    if reason is None:
        return
    for item in items:
        if item.path.parent.name == "oracle":
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="module")
def pair(request: pytest.FixtureRequest) -> Iterator[TapPair]:
    """Tap A → bridge → tap B in a namespace named after the module; removed after it."""
    purpose = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")[:12]
    with tap_pair(purpose.replace("_", "")) as p:
        yield p
