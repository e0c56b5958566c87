"""The directory source on real files: the initial read, then live edits through the watcher.

Tests wait for events (with a timeout), never for the clock, and always stop the source.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from meshcp.model.core import Namespace, ServiceAccount
from meshcp.model.meta import Meta, ObjectRef, frozen_map
from meshcp.model.state import Problem
from meshcp.runtime.store import Store
from meshcp.sources import files, manifests
from meshcp.sources.events import Delete, Event, Invalid, Resolved, Synced, Upsert
from meshcp.sources.files import FileSource, SourceError

TIMEOUT = 10.0
EXAMPLES = Path(__file__).parents[2] / "examples"


class Feed:
    """Collects what a running source emits."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def emit(self, event: Event) -> None:
        self.queue.put_nowait(event)

    async def until(self, done: Callable[[list[Event]], bool]) -> list[Event]:
        """Events until `done` holds, plus the rest of that batch (a batch is emitted at once)."""
        got: list[Event] = []
        async with asyncio.timeout(TIMEOUT):
            while not done(got):
                got.append(await self._next())
        while not self.queue.empty():
            got.append(self.queue.get_nowait())
        return got

    async def _next(self) -> Event:
        getter = asyncio.ensure_future(self.queue.get())
        try:
            waiting: set[asyncio.Future[Any]] = {getter}
            if self.task is not None:
                waiting.add(self.task)
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                assert self.task is not None
                self.task.result()  # the source's own error, if it failed
                raise AssertionError("the source stopped")
            return getter.result()
        finally:
            getter.cancel()


def has(kind: type[Event], ref: ObjectRef | None = None) -> Callable[[list[Event]], bool]:
    return lambda got: any(isinstance(event, kind) and (ref is None or ref_in(event) == ref) for event in got)


def ref_in(event: Event) -> ObjectRef | None:
    match event:
        case Upsert(obj=obj):
            return obj.ref
        case Delete(ref=ref) | Resolved(ref=ref):
            return ref
        case Invalid(problem=problem):
            return problem.ref
    return None


def changes(events: list[Event]) -> list[tuple[str, ObjectRef | None]]:
    return [(type(event).__name__, ref_in(event)) for event in events if not isinstance(event, Synced)]


@contextlib.asynccontextmanager
async def watching(
    directory: Path, *, retry_interval: float = 1.0, resync_interval: float = 30.0
) -> AsyncIterator[tuple[Feed, list[Event]]]:
    """Runs a source on `directory`; yields the feed and what it emitted up to `Synced`."""
    feed = Feed()
    source = FileSource(directory, feed.emit, retry_interval=retry_interval, resync_interval=resync_interval)
    feed.task = asyncio.create_task(source.run())
    try:
        yield feed, await feed.until(has(Synced))
    finally:
        feed.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feed.task


@contextlib.asynccontextmanager
async def running(directory: Path) -> AsyncIterator[tuple[FileSource, Feed]]:
    """Like `watching`, with the source itself (for its parse counter) once it is synced."""
    feed = Feed()
    source = FileSource(directory, feed.emit)
    feed.task = asyncio.create_task(source.run())
    try:
        await feed.until(has(Synced))
        yield source, feed
    finally:
        feed.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feed.task


def write(path: Path, text: str) -> None:
    """Write whole (as editors and `kubectl`-style tools do): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def account(name: str, namespace: str = "shop", **labels: str) -> str:
    lines = [
        "apiVersion: v1",
        "kind: ServiceAccount",
        "metadata:",
        f"  name: {name}",
        f"  namespace: {namespace}",
    ]
    if labels:
        lines.append("  labels:")
        lines.extend(f'    {key}: "{value}"' for key, value in labels.items())
    return "\n".join(lines) + "\n"


def sa(name: str, namespace: str = "shop", **labels: str) -> ServiceAccount:
    return ServiceAccount(Meta(name, namespace, frozen_map(labels)))


def ref(name: str, namespace: str = "shop", kind: str = "ServiceAccount") -> ObjectRef:
    return ObjectRef(kind, namespace, name)


def file_ref(relative: str) -> ObjectRef:
    return ObjectRef("File", "", relative)


async def test_initial_read_emits_every_object_with_its_location_then_synced(tmp_path: Path) -> None:
    write(
        tmp_path / "a.yaml",
        "# the shop\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\n" + account("web"),
    )
    write(tmp_path / "sub" / "deeper" / "b.yml", account("db"))
    items = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": n}} for n in ("api", "worker")
    ]
    write(tmp_path / "c.json", json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=2))
    write(tmp_path / "README.md", "not a manifest")
    write(tmp_path / ".hidden.yaml", account("hidden"))
    write(tmp_path / ".git" / "x.yaml", account("vcs"))
    write(tmp_path / "empty.yaml", "# nothing here\n---\n")

    async with watching(tmp_path) as (_, events):
        assert isinstance(events[-1], Synced) and events[-1].source == "files"
        upserts = {event.obj.ref: event for event in events if isinstance(event, Upsert)}
        assert len(events) == len(upserts) + 1
        assert {key: value.location for key, value in upserts.items()} == {
            ObjectRef("Namespace", "", "shop"): "a.yaml:2",
            ref("web"): "a.yaml:7",
            ref("db"): "sub/deeper/b.yml:1",
            ref("api", "default"): "c.json:5",
            ref("worker", "default"): "c.json:12",
        }
        assert upserts[ObjectRef("Namespace", "", "shop")].obj == Namespace(Meta("shop"))


async def test_invalid_objects_are_reported_at_their_line_and_the_rest_is_read(tmp_path: Path) -> None:
    bad_service = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n"
    bad_service += "spec:\n  ports:\n  - port: 0\n"
    deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n"
    write(tmp_path / "f.yaml", "---\n".join([account("ok"), bad_service, deployment, "- just\n- a list\n"]))

    async with watching(tmp_path) as (_, events):
        problems = {event.problem.ref: event.problem for event in events if isinstance(event, Invalid)}
        assert problems == {
            ref("web", kind="Service"): Problem(
                ref("web", kind="Service"),
                "spec.ports[0].port: must be a port number 1..65535, got 0",
                "f.yaml:14",  # the field's line (`- port: 0`), not the document's (7)
            ),
            ObjectRef("Deployment", "", "web"): Problem(
                ObjectRef("Deployment", "", "web"), "unsupported kind Deployment (apps/v1)", "f.yaml:16"
            ),
            ObjectRef("Document", "", "f.yaml:21"): Problem(
                ObjectRef("Document", "", "f.yaml:21"),
                "a manifest must be a mapping, got a list",
                "f.yaml:21",
            ),
        }
        assert [event.obj for event in events if isinstance(event, Upsert)] == [sa("ok")]


async def test_a_file_with_a_syntax_error_is_reported_at_the_error_line(tmp_path: Path) -> None:
    write(tmp_path / "bad.yaml", "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x\n  namespace: [\n")
    write(tmp_path / "bad.json", '{\n  "apiVersion": "v1",\n  "kind": \n}\n')
    write(tmp_path / "ok.yaml", account("web"))

    async with watching(tmp_path) as (_, events):
        problems = {event.problem.ref: event.problem for event in events if isinstance(event, Invalid)}
        assert problems[file_ref("bad.yaml")].reason.startswith("invalid YAML: ")
        assert problems[file_ref("bad.yaml")].location == "bad.yaml:4"
        assert problems[file_ref("bad.json")] == Problem(
            file_ref("bad.json"), "invalid JSON: Expecting value", "bad.json:4"
        )
        assert [event.obj for event in events if isinstance(event, Upsert)] == [sa("web")]


async def test_a_syntax_error_keeps_the_files_last_good_objects_until_it_is_fixed(tmp_path: Path) -> None:
    path = tmp_path / "shop.yaml"
    write(path, account("web") + "---\n" + account("db"))
    async with watching(tmp_path) as (feed, _):
        write(path, account("web") + "---\n" + account("db") + "  labels: tier: data\n")
        (broken,) = await feed.until(has(Invalid))
        assert isinstance(broken, Invalid)
        assert broken.problem.ref == file_ref("shop.yaml")
        assert broken.problem.location == "shop.yaml:12"
        assert broken.problem.reason == "invalid YAML: mapping values are not allowed in this context"

        write(path, account("web", tier="front"))
        fixed = await feed.until(lambda got: has(Resolved)(got) and has(Delete)(got))
        assert sorted(changes(fixed)) == [
            ("Delete", ref("db")),
            ("Resolved", file_ref("shop.yaml")),
            ("Upsert", ref("web")),
        ]
        assert Upsert(sa("web", tier="front"), "shop.yaml:1") in fixed


async def test_an_edit_emits_only_what_changed(tmp_path: Path) -> None:
    path = tmp_path / "shop.yaml"
    write(path, account("web") + "---\n" + account("db"))
    async with watching(tmp_path) as (feed, _):
        # `web` moves down a line but is the same object: not re-sent. `db` changed.
        write(path, "# accounts\n" + account("web") + "---\n" + account("db", tier="data"))
        assert await feed.until(has(Upsert)) == [Upsert(sa("db", tier="data"), "shop.yaml:8")]


async def test_objects_removed_from_a_file_or_with_it_are_deleted(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", account("web") + "---\n" + account("db"))
    write(tmp_path / "b.yaml", account("api"))
    async with watching(tmp_path) as (feed, _):
        write(tmp_path / "a.yaml", account("web"))
        assert await feed.until(has(Delete)) == [Delete(ref("db"))]

        (tmp_path / "b.yaml").unlink()
        assert await feed.until(has(Delete)) == [Delete(ref("api"))]

        write(tmp_path / "new" / "c.yaml", account("cache"))
        assert await feed.until(has(Upsert)) == [Upsert(sa("cache"), "new/c.yaml:1")]


async def test_an_invalid_edit_keeps_the_old_object_until_fixed(tmp_path: Path) -> None:
    path = tmp_path / "shop.yaml"
    write(path, account("web"))
    async with watching(tmp_path) as (feed, _):
        write(path, account("web") + "  labels:\n    version: 2\n")
        reason = "metadata.labels.version: must be a string, got 2 (quote it to keep it text)"
        # at the field (`version: 2`), not at the document's first line
        assert await feed.until(has(Invalid)) == [Invalid(Problem(ref("web"), reason, "shop.yaml:7"))]

        write(path, account("web", version="2"))
        assert await feed.until(has(Resolved)) == [
            Upsert(sa("web", version="2"), "shop.yaml:1"),
            Resolved(ref("web")),
        ]


async def test_an_object_defined_twice_is_kept_from_the_first_file_and_reported_on_the_second(
    tmp_path: Path,
) -> None:
    write(tmp_path / "a.yaml", account("web", owner="a"))
    write(tmp_path / "b.yaml", account("web", owner="b"))
    async with watching(tmp_path) as (feed, events):
        assert changes(events) == [("Upsert", ref("web")), ("Invalid", ref("web"))]
        assert Upsert(sa("web", owner="a"), "a.yaml:1") in events
        assert (
            Invalid(Problem(ref("web"), "defined again; the definition at a.yaml:1 is used", "b.yaml:1"))
            in events
        )

        # A file added later does not take the object over, even if it sorts first.
        write(tmp_path / "0.yaml", account("web", owner="zero"))
        assert await feed.until(has(Invalid)) == [
            Invalid(Problem(ref("web"), "defined again; the definition at a.yaml:1 is used", "0.yaml:1"))
        ]

        # Editing the owner re-sends the object, and the duplicate is reported again after it.
        write(tmp_path / "a.yaml", account("web", owner="a2"))
        assert changes(await feed.until(has(Invalid))) == [("Upsert", ref("web")), ("Invalid", ref("web"))]

        # When the owner goes, the next file in path order takes over.
        (tmp_path / "a.yaml").unlink()
        taken_over = await feed.until(has(Upsert))
        assert Upsert(sa("web", owner="zero"), "0.yaml:1") in taken_over
        assert (
            Invalid(Problem(ref("web"), "defined again; the definition at 0.yaml:1 is used", "b.yaml:1"))
            in taken_over
        )

        (tmp_path / "b.yaml").unlink()
        assert await feed.until(has(Resolved)) == [Resolved(ref("web"))]


async def test_a_missing_directory_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(SourceError, match=str(missing)):
        await FileSource(missing, lambda event: None).run()
    write(tmp_path / "file.yaml", account("web"))
    with pytest.raises(SourceError, match="not a directory"):
        await FileSource(tmp_path / "file.yaml", lambda event: None).run()


async def test_a_vanished_directory_keeps_its_objects_until_it_returns(tmp_path: Path) -> None:
    directory = tmp_path / "manifests"
    write(directory / "a.yaml", account("web"))
    write(directory / "b.yaml", account("db"))
    async with watching(directory, retry_interval=0.02) as (feed, _):
        shutil.rmtree(directory)
        events = await feed.until(has(Invalid))
        assert changes(events) == [("Invalid", file_ref("."))]

        write(directory / "a.yaml", account("web", back="yes"))
        events = await feed.until(has(Resolved))
        assert sorted(changes(events)) == [
            ("Delete", ref("db")),
            ("Resolved", file_ref(".")),
            ("Upsert", ref("web")),
        ]


async def test_changes_the_watcher_missed_are_found_by_the_periodic_stat_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def deaf(*paths: object, **options: object) -> AsyncIterator[set[tuple[int, str]]]:
        await asyncio.Event().wait()  # a watcher whose notifications were all lost
        yield set()

    monkeypatch.setattr("meshcp.sources.files.awatch", deaf)
    write(tmp_path / "a.yaml", account("web"))
    async with watching(tmp_path, resync_interval=0.02) as (feed, _):
        write(tmp_path / "a.yaml", account("web", tier="front"))
        assert await feed.until(has(Upsert)) == [Upsert(sa("web", tier="front"), "a.yaml:1")]
        (tmp_path / "a.yaml").unlink()
        assert await feed.until(has(Delete)) == [Delete(ref("web"))]


async def test_the_bookstore_example_loads_without_problems() -> None:
    store = Store(window=0.01, max_wait=0.1)
    store.expect("files")
    feed = Feed()

    def emit(event: Event) -> None:
        feed.emit(event)
        store.apply(event)

    source = FileSource(EXAMPLES / "bookstore", emit)
    feed.task = asyncio.create_task(source.run())
    try:
        events = await feed.until(has(Synced))
        states = store.states()
        state = await asyncio.wait_for(anext(states), TIMEOUT)
        await states.aclose()
    finally:
        feed.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feed.task

    assert [event for event in events if isinstance(event, Invalid)] == []
    counts = Counter(type(event.obj).__name__ for event in events if isinstance(event, Upsert))
    assert counts == {
        "Namespace": 4,
        "ServiceAccount": 4,
        "Service": 6,
        "Pod": 5,
        "HTTPRouteGroup": 2,
        "TrafficTarget": 2,
        "TrafficSplit": 1,
        "MeshConfig": 1,
    }
    assert state.problems == ()
    assert len(state.objects) == 25
    assert state.meshed_namespaces == {"bookstore", "bookbuyer", "bookthief", "bookwarehouse"}
    assert not state.permissive("bookstore")
    (split,) = state.traffic_splits
    assert [(backend.service, backend.weight) for backend in split.backends] == [
        ("bookstore-v1", 75),
        ("bookstore-v2", 25),
    ]
    assert all(pod.ready and pod.ip.startswith("10.244.") for pod in state.pods)
    assert all(service.cluster_ip.startswith("10.96.") for service in state.services)


async def test_an_edit_to_a_big_file_parses_only_the_documents_it_changed(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    texts = [account(f"svc-{i}") for i in range(50)]  # 5 lines each, 6 with the marker
    write(path, "---\n".join(texts))
    async with running(tmp_path) as (source, feed):
        assert source.documents_parsed == 50

        # A comment in the first document moves every later one a line down; one is edited.
        texts[0] = "# the shop\n" + texts[0]
        texts[25] = account("svc-25", tier="data")
        write(path, "---\n".join(texts))
        assert await feed.until(has(Upsert)) == [Upsert(sa("svc-25", tier="data"), "mesh.yaml:152")]
        assert source.documents_parsed == 52  # the two documents whose text changed

        # The documents that only moved were not parsed again, and their locations followed.
        write(tmp_path / "other.yaml", account("svc-40"))
        reason = "defined again; the definition at mesh.yaml:244 is used"
        assert await feed.until(has(Invalid)) == [Invalid(Problem(ref("svc-40"), reason, "other.yaml:1"))]
        assert source.documents_parsed == 53

        # Removing a document parses nothing; a problem citing a moved line is said again.
        del texts[10]
        write(path, "---\n".join(texts))
        reason = "defined again; the definition at mesh.yaml:238 is used"
        assert await feed.until(has(Delete)) == [
            Delete(ref("svc-10")),
            Invalid(Problem(ref("svc-40"), reason, "other.yaml:1")),
        ]
        assert source.documents_parsed == 53

        texts[0] = "# the shop, again\n#\n" + texts[0]
        write(path, "---\n".join(texts))
        reason = "defined again; the definition at mesh.yaml:240 is used"
        assert await feed.until(has(Invalid)) == [Invalid(Problem(ref("svc-40"), reason, "other.yaml:1"))]
        assert source.documents_parsed == 54


async def test_a_renamed_file_is_not_parsed_again(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "---\n".join(account(f"svc-{i}") for i in range(5)))
    async with running(tmp_path) as (source, feed):
        os.replace(tmp_path / "a.yaml", tmp_path / "b.yaml")
        write(tmp_path / "c.yaml", account("db"))  # to know when the rename has been read
        assert await feed.until(has(Upsert)) == [Upsert(sa("db"), "c.yaml:1")]
        assert source.documents_parsed == 6


@pytest.mark.parametrize(
    ("module", "held"), [(manifests, "parse_object"), (files, "_signature")], ids=["parse", "stat"]
)
async def test_the_event_loop_keeps_running_while_files_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: object, held: str
) -> None:
    """Parsing and stat run in the source's thread: while one is held up, a heartbeat task on
    the loop keeps ticking, and it is the heartbeat that lets the held-up step go on. (On the
    loop, the step would block the heartbeat until the hold gives up, and the test fails.)"""
    started, released = threading.Event(), threading.Event()
    outcomes: list[bool] = []
    real = getattr(module, held)

    def slow(*args: Any) -> Any:
        started.set()
        outcomes.append(released.wait(TIMEOUT))
        return real(*args)

    monkeypatch.setattr(module, held, slow)
    beats = 0

    async def heartbeat() -> None:
        nonlocal beats
        while beats < 100:
            await asyncio.sleep(0)
            if started.is_set():
                beats += 1
        released.set()

    write(tmp_path / "a.yaml", account("web"))
    beating = asyncio.create_task(heartbeat())
    try:
        async with watching(tmp_path) as (_, events):
            assert Upsert(sa("web"), "a.yaml:1") in events
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
    assert beats == 100
    assert outcomes and all(outcomes)  # every held-up call was let go by the heartbeat


async def test_an_edit_stats_only_the_files_it_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stat: Counter[str] = Counter()
    real = files._signature

    def counted(path: Path) -> tuple[int, int, int]:
        stat[path.name] += 1
        return real(path)

    monkeypatch.setattr(files, "_signature", counted)
    for i in range(20):
        write(tmp_path / f"ns-{i % 4}" / f"svc-{i}.yaml", account(f"svc-{i}"))
    async with running(tmp_path) as (_, feed):
        assert sum(stat.values()) == 20
        stat.clear()
        write(tmp_path / "ns-3" / "svc-7.yaml", account("svc-7", tier="data"))
        assert await feed.until(has(Upsert)) == [Upsert(sa("svc-7", tier="data"), "ns-3/svc-7.yaml:1")]
        assert stat == {"svc-7.yaml": 1}  # not a walk of the tree


async def test_a_directory_moved_in_is_read_and_one_removed_is_deleted(tmp_path: Path) -> None:
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    write(tree / "a.yaml", account("web"))
    write(outside / "team" / "deeper" / "b.yaml", account("db"))
    write(outside / "team" / "c.yaml", account("cache"))
    async with watching(tree) as (feed, _):
        os.rename(outside / "team", tree / "team")
        moved_in = await feed.until(lambda got: len(changes(got)) >= 2)
        assert sorted(changes(moved_in)) == [("Upsert", ref("cache")), ("Upsert", ref("db"))]

        shutil.rmtree(tree / "team")
        removed = await feed.until(lambda got: len(changes(got)) >= 2)
        assert sorted(changes(removed)) == [("Delete", ref("cache")), ("Delete", ref("db"))]


async def test_a_configmap_update_through_its_data_symlink_is_seen(tmp_path: Path) -> None:
    """Kubernetes' atomic writer: visible names are symlinks through `..data`, which is swapped
    to a new hidden directory; the visible names themselves do not change."""
    write(tmp_path / "..2025_01" / "shop.yaml", account("web"))
    (tmp_path / "..data").symlink_to("..2025_01")
    (tmp_path / "shop.yaml").symlink_to("..data/shop.yaml")
    async with watching(tmp_path) as (feed, events):
        assert Upsert(sa("web"), "shop.yaml:1") in events
        write(tmp_path / "..2025_02" / "shop.yaml", account("web", tier="front"))
        (tmp_path / "..data_tmp").symlink_to("..2025_02")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        shutil.rmtree(tmp_path / "..2025_01")
        assert await feed.until(has(Upsert)) == [Upsert(sa("web", tier="front"), "shop.yaml:1")]
