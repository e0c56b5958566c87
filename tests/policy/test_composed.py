"""What the reconciler composes from templates and cached fragments is what the plain
compile functions give, encoded by betterproto2: same bytes, same versions.

The reconciler fills outbound routes from shared pieces and shares upstream clusters
across identities; if it
drifted from the typed model by one byte, proxies would see different versions from a
replica built another way, and the golden files (which compare decoded content) might
not notice.
"""

from __future__ import annotations

import pytest

from meshcp.cache import Encoder, pack
from meshcp.compile import cds, eds, lds, rds
from meshcp.model.meshconfig import MeshConfig
from meshcp.model.state import MeshObject, MeshState
from meshcp.runtime.reconcile import Reconciler
from tests.policy.mesh import RULE_BUY, Bookstore, namespace, pod, service, split, target


def _states() -> dict[str, MeshState]:
    base = Bookstore().objects()
    grpc: list[MeshObject] = [
        namespace("other"),
        service("other", "bookstore", "10.96.9.1", (14001, "grpc")),  # same name, other namespace
        pod("other", "bookstore", "other-sa", "10.244.9.1"),
        service("bookstore", "echo", "10.96.0.30", (7000, "http"), (7001, "tcp")),
        pod("bookstore", "echo", "echo", "10.244.5.1"),
    ]
    weighted: list[MeshObject] = [
        split("bookstore", "s", "bookstore", ("bookstore-v1", 3), ("bookstore-v2", 1)),
        target("bookstore", "t", "bookstore", [("bookbuyer", "bookbuyer")], RULE_BUY),
    ]
    return {
        "bookstore": MeshState().with_changes(base),
        "more": MeshState().with_changes([*base, *grpc]),
        "split": MeshState().with_changes([*base, *grpc, *weighted]),
        "pruned": MeshState().with_changes(
            [*base, *grpc, *weighted, MeshConfig(prune_unreachable_upstreams=True)]
        ),
    }


@pytest.mark.parametrize("name", sorted(_states()))
async def test_composed_resources_equal_the_encoded_typed_model(name: str) -> None:
    encoder = Encoder()
    rec = Reconciler(encoder)
    classes = rec.apply(_states()[name])
    assert classes
    for proxy_class in classes:
        policy = rec.policy.classes[proxy_class.key]
        messages = [*cds.clusters(policy), *lds.listeners(policy), *rds.routes(policy)]
        messages += [
            eds.load_assignment(service, port, rec.policy.endpoints.get((service, port), ()))
            for service, port, *_ in cds.upstream_specs(policy.upstreams)
        ]
        expected = {}
        for message in messages:
            resource = Encoder().encode(message)
            assert resource.body == bytes(pack(message))  # betterproto2's own encoding
            expected[(resource.type_url, resource.name)] = resource
        got = {(r.type_url, r.name): r for r in proxy_class.all_resources()}
        assert len(got) == len(proxy_class.all_resources()), "a resource name occurs twice"
        assert got.keys() == expected.keys()
        for key, resource in got.items():
            assert resource.body == expected[key].body, key
            assert resource.version == expected[key].version, key
            assert resource.endpoints == expected[key].endpoints, key
