"""Fixtures of the sources' tests: a Kubernetes API server emulator serving every kind the
Kubernetes source watches."""

from __future__ import annotations

from collections.abc import AsyncIterator

import kmock
import pytest

from meshcp.sources.kubernetes import RESOURCES
from tests.sources.kube_fixtures import Emulator
from tests.sources.kube_objects import key


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator() as k, kmock.Server(k):
        k.declare(*(key(resource) for resource in RESOURCES))
        yield k
