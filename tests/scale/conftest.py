"""The scale-out tests' cluster: one per module, across network namespaces."""

from __future__ import annotations

import pytest

from tests.scale.cluster import Cluster


@pytest.fixture(scope="module")
def cluster():
    with Cluster() as started:
        yield started
