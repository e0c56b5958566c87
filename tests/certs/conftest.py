from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from meshcp.certs.internal import InternalCA
from meshcp.certs.storage import MemoryStore

from .support import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def internal_ca(clock: FakeClock) -> AsyncIterator[InternalCA]:
    yield await InternalCA.open(MemoryStore(), clock=clock)
