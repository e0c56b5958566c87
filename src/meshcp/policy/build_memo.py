"""What one policy build may take over from the last: the memo `build.build_policies`
is given by its caller (the reconciler keeps one for its lifetime).

A state made by `MeshState.with_changes` keeps the objects, and the indexes, of what did
not change, so most of a build can be recognised by identity instead of recomputed:

- per pod object: its identity and proxy UUID (a SHA-1);
- derived values whose inputs are named as objects (`derived`): the mesh's upstreams
  (services, pods, slices, splits...), the pods' local-service index, the endpoints, the
  inbound ports of a group of pods; a hit needs every input to be the object it was
  computed from or an equal one (a pure function of its inputs' values), and replays the
  problems the computation reported;
- equal values handed on as the objects of the last build (`same`, `equal`; the
  endpoints through `last_value`): upstreams and their tuples, inbound ports, endpoints
  and whole class policies, so that what consumes the policy (the reconciler) compares them by identity
  and takes an unchanged class over as it was.

The memo holds only what the last build used; a build without one computes everything,
and the result is the same either way (tests/runtime/test_endpoint_rounds.py compares).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from meshcp.identity import Identity
from meshcp.model.core import Pod
from meshcp.model.meta import ObjectRef
from meshcp.policy.membership import proxy_uuid
from meshcp.policy.types import Report, Upstream

T = TypeVar("T")


class BuildMemo:
    """Tables by name, each as the last build left it and as this build uses it."""

    def __init__(self) -> None:
        self._last: dict[str, dict[Any, Any]] = {}
        self._used: dict[str, dict[Any, Any]] = {}
        #: Set by endpoints-only rounds since the last build: the state they reached and
        #: its endpoints (`build.endpoints_moved`), applied by the next build.
        self.moved: tuple[Any, Any] | None = None
        #: How often each `derived` value was computed (not taken over): what tests and
        #: profiles look at to see that a change did not walk the mesh.
        self.computed: dict[str, int] = {}

    def _table(self, name: str) -> tuple[dict[Any, Any], dict[Any, Any]]:
        return self._last.get(name, {}), self._used.setdefault(name, {})

    def same(self, name: str, value: T) -> T:
        """`value`, or the equal object of the last build (or of this one)."""
        last, used = self._table(name)
        found: T = used.get(value) or last.get(value) or value
        used[found] = found
        return found

    def pod(self, pod: Pod) -> tuple[Identity, str]:
        """The pod's identity and proxy UUID."""
        last, used = self._table("pods")
        held = last.get(id(pod))
        if held is None or held[0] is not pod:
            held = (pod, Identity(pod.meta.namespace, pod.service_account), proxy_uuid(pod))
        used[id(pod)] = held
        return held[1], held[2]

    def keyed(self, name: str, key: Hashable, compute: Callable[[], T]) -> T:
        """`compute()`, once per equal `key` (a pure function of it)."""
        last, used = self._table(name)
        found: T | None = used.get(key) or last.get(key)
        if found is None:
            found = compute()
        used[key] = found
        return found

    def derived(
        self,
        name: str,
        key: Hashable,
        inputs: tuple[object, ...],
        compute: Callable[..., T],
        report: Report,
        *,
        keep_if_reported: bool = True,
    ) -> T:
        """`compute(report=...)`, unless the last build computed it from the same
        `inputs` (`_same_objects`): then its result, with the problems it reported
        reported again. `keep_if_reported=False`: a result that reported
        problems is not kept (problems that name the object asked about, not the key)."""
        last, used = self._table(name)
        held = used.get(key) or last.get(key)
        if held is not None and _same_objects(held[0], inputs):
            for ref, reason in held[2]:
                report(ref, reason)
            used[key] = held
            return held[1]  # type: ignore[no-any-return]
        problems: list[tuple[ObjectRef, str]] = []

        def noted(ref: ObjectRef, reason: str) -> None:
            problems.append((ref, reason))
            report(ref, reason)

        found = compute(report=noted)
        self.computed[name] = self.computed.get(name, 0) + 1
        if keep_if_reported or not problems:
            used[key] = (inputs, found, tuple(problems))
        return found

    def upstreams(self, upstreams: tuple[Upstream, ...]) -> tuple[Upstream, ...]:
        """The tuple, of the last build's objects where equal (elements and tuple)."""
        return self.same("tuples", tuple(self.same("upstreams", u) for u in upstreams))

    def upstream_tuple(self, upstreams: tuple[Upstream, ...]) -> tuple[Upstream, ...]:
        """The tuple (of elements `upstreams` already handed out), the last build's where
        equal."""
        return self.same("tuples", upstreams)

    def equal(self, name: str, value: T, key: Hashable = None) -> T:
        """The last build's value of `name` (at `key`) if equal to `value`, else `value`:
        an unchanged class policy or table stays the same object (a C-level comparison,
        most values already the same objects), so the reconciler takes the class over and
        the xDS server's streams need not be reclassified."""
        last, used = self._table(name)
        held: T | None = last.get(key)
        found = held if held is not None and held == value else value
        used[key] = found
        return found

    def rebase(self, names: tuple[str, ...], inputs: tuple[object, ...], value: object = None) -> None:
        """Entries `names` of the last build hold for `inputs` as their leading inputs (and
        are `value`, when given): a caller proved it (see `build.endpoints_moved`)."""
        for name in names:
            table = self._last.get(name, {})
            held = table.get(None)
            if held is not None:
                table[None] = (inputs + held[0][len(inputs) :], held[1] if value is None else value, held[2])

    def last_value(self, name: str) -> Any:
        """The value `derived` gave for `name` (key None) in the last build, or None."""
        held = self._last.get(name, {}).get(None)
        return None if held is None else held[1]

    def done(self) -> None:
        """The build is over: keep what it used, for the next."""
        self._last, self._used = self._used, {}


def _same_objects(before: tuple[object, ...], now: tuple[object, ...]) -> bool:
    """The same inputs: the very objects, or equal ones (an index recomputed from the same
    objects compares equal in one pass of identity checks; every derived value is a pure
    function of its inputs' values)."""
    return len(before) == len(now) and all(a is b or a == b for a, b in zip(before, now, strict=True))
