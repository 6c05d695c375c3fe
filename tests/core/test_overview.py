"""Table tests of the dashboard's view of the state (``dispatcher.core.overview``): each
check's status, the target line drawn from its first instance, and the page of checks
(counts whatever the filter, the filters, the order, the slice, failing checks per node).

The state is built with the steps of ``test_state_table`` (heartbeats, sources, results);
nothing here waits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from dispatcher import convert
from dispatcher.core.model import CheckConfig, Digest, NodeName, SourceName, make_config
from dispatcher.core.overview import (
    TARGET_MAX_CHARS,
    CheckFilter,
    CheckStatus,
    check_page,
    check_page_steps,
    status_of,
    target_of,
)
from dispatcher.core.state import ClusterState
from dispatcher.core.steps import run_steps
from tests.core.test_state_table import WALL, add, beat, result

FAILING, DANGLING, PENDING, OK = (
    CheckStatus.FAILING,
    CheckStatus.DANGLING,
    CheckStatus.PENDING,
    CheckStatus.OK,
)
EVERY = [FAILING, DANGLING, PENDING, OK]


def config(
    name: str, instance: Mapping[str, Any], *, zone: str | None = None, interval_s: float = 15.0
) -> CheckConfig:
    """A check pinned to the node of ``zone`` (a zone no node has: it dangles)."""
    return make_config(
        name=name,
        instances=[dict(instance)],
        node_selector={"zone": zone} if zone is not None else None,
        interval_s=interval_s,
    )


def report(state: ClusterState, check: CheckConfig, *oks: bool) -> None:
    """Results from the check's node, one run per ``ok``, in run order."""
    node = state.placement[check.digest]
    for i, ok in enumerate(oks):
        accepted, rejected = state.record_results(
            node, [result(check, ok=ok, started_at=10.0 * (i + 1))], now_wall=WALL
        )
        assert (accepted, rejected) == (1, [])


def two_nodes() -> ClusterState:
    state = ClusterState()
    beat(state, "node-a", now=0.0, labels={"zone": "a"})
    beat(state, "node-b", now=0.0, labels={"zone": "b"})
    return state


# --------------------------------------------------------------------- status_of


def test_status_of_each_kind_of_check() -> None:
    state = two_nodes()
    ok = config("http", {"url": "http://ok/"}, zone="a")
    failing = config("http", {"url": "http://failing/"}, zone="a")
    recovered = config("http", {"url": "http://recovered/"}, zone="b")
    pending = config("http", {"url": "http://pending/"}, zone="b")
    dangling = config("http", {"url": "http://dangling/"}, zone="nowhere")
    add(state, ok, failing, recovered, pending, dangling, now=0.0)
    report(state, ok, True)
    report(state, failing, True, False)
    report(state, recovered, False, False, True)

    assert {c.digest: status_of(state, c.digest) for c in (ok, failing, recovered)} == {
        ok.digest: OK,
        failing.digest: FAILING,
        recovered.digest: OK,
    }
    assert state.placement.get(pending.digest) == "node-b"
    assert status_of(state, pending.digest) is PENDING, "placed without a result yet"
    assert dangling.digest not in state.placement
    assert status_of(state, dangling.digest) is DANGLING


def test_a_failing_check_that_lost_its_node_is_failing_not_dangling() -> None:
    state = two_nodes()
    failed = config("tcp", {"host": "db", "port": 5432}, zone="a")
    passed = config("tcp", {"host": "cache", "port": 6379}, zone="a")
    add(state, failed, passed, now=0.0)
    report(state, failed, False)
    report(state, passed, True)

    beat(state, "node-b", now=100.0, labels={"zone": "b"})
    assert state.expire_nodes(now=100.0, timeout_s=30.0) == ["node-a"]

    assert failed.digest not in state.placement
    assert passed.digest not in state.placement
    assert status_of(state, failed.digest) is FAILING, "it still failed: failing beats dangling"
    assert status_of(state, passed.digest) is DANGLING


# --------------------------------------------------------------------- target_of


@dataclass(frozen=True)
class TargetCase:
    name: str
    instances: list[dict[str, Any]]
    expected: str


TARGET_CASES = [
    TargetCase("http: the url", [{"url": "https://shop.example/healthz"}],
               "https://shop.example/healthz"),
    TargetCase("the url first, whatever else the instance has",
               [{"url": "http://a/", "host": "b", "port": 1, "name": "c"}], "http://a/"),
    TargetCase("tcp: host and port", [{"host": "db.internal", "port": 5432}], "db.internal:5432"),
    TargetCase("tcp with send and expect: still host and port",
               [{"host": "redis", "port": 6379, "send": "PING\r\n", "expect": "PONG"}],
               "redis:6379"),
    TargetCase("dns: the name", [{"name": "example.org", "record_type": "AAAA"}], "example.org"),
    TargetCase("exec: the command line", [{"command": ["/bin/check-disk", "--min", 10]}],
               "/bin/check-disk --min 10"),
    TargetCase("anything else: compact JSON, keys sorted", [{"zone": "eu", "bucket": "b1"}],
               '{"bucket":"b1","zone":"eu"}'),
    TargetCase("a host without a port is not host:port", [{"host": "h"}], '{"host":"h"}'),
    TargetCase("several instances: the first and how many more",
               [{"url": "http://one/"}, {"url": "http://two/"}], "http://one/ (+1)"),
    TargetCase("three instances of different kinds",
               [{"host": "db", "port": 1}, {"url": "http://x/"}, {"name": "y"}], "db:1 (+2)"),
]  # fmt: skip


@pytest.mark.parametrize("case", TARGET_CASES, ids=[c.name for c in TARGET_CASES])
def test_target_of(case: TargetCase) -> None:
    check = make_config(name="custom", instances=case.instances)
    assert target_of(check) == case.expected


@pytest.mark.parametrize(
    ("length", "cut"),
    [(TARGET_MAX_CHARS - 1, False), (TARGET_MAX_CHARS, False), (TARGET_MAX_CHARS + 1, True),
     (10 * TARGET_MAX_CHARS, True)],
)  # fmt: skip
def test_target_of_is_cut_at_its_maximum_with_an_ellipsis(length: int, cut: bool) -> None:
    url = "http://x/" + "p" * (length - len("http://x/"))
    target = target_of(make_config(name="http", instances=[{"url": url}]))
    if cut:
        assert len(target) == TARGET_MAX_CHARS
        assert target == url[: TARGET_MAX_CHARS - 1] + "…"
    else:
        assert target == url


def test_target_of_several_long_instances_is_cut_too() -> None:
    long_url = "http://x/" + "p" * TARGET_MAX_CHARS
    target = target_of(make_config(name="http", instances=[{"url": long_url}, {"url": "y"}]))
    assert len(target) == TARGET_MAX_CHARS
    assert target.endswith("…")


# -------------------------------------------------------------------- check_page


@dataclass(frozen=True)
class Cluster:
    """One check of each status on two nodes, held by two sources.

    node-a: web (ok), db (failing), queue (pending); node-b: api (failing), ping (ok);
    dangling: orphan (no node has its zone), lost (failed on node-c, which expired).
    ``ci`` holds every check but ``ping``; ``file:ops.yaml`` holds ``db`` and ``ping``.
    """

    state: ClusterState
    checks: dict[str, CheckConfig]

    def names(self, digests: list[Digest]) -> list[str]:
        by_digest = {c.digest: name for name, c in self.checks.items()}
        return [by_digest[d] for d in digests]

    def page(self, check_filter: CheckFilter | None = None) -> list[str]:
        got = check_page(self.state, check_filter or CheckFilter(), offset=0, limit=100)
        return self.names(got.digests)


@pytest.fixture
def cluster() -> Cluster:
    state = two_nodes()
    beat(state, "node-c", now=0.0, labels={"zone": "c"})
    checks = {
        "web": config("http", {"url": "http://Shop.example/healthz"}, zone="a"),
        "db": config("tcp", {"host": "db.internal", "port": 5432}, zone="a"),
        "queue": config("tcp", {"host": "rabbit", "port": 5672}, zone="a"),
        "api": config("http", {"url": "http://api.example/ready"}, zone="b"),
        "ping": config("exec", {"command": ["ping", "-c1", "gw"]}, zone="b"),
        "orphan": config("dns", {"name": "orphan.example"}, zone="nowhere"),
        "lost": config("dns", {"name": "lost.example"}, zone="c"),
    }
    add(state, *(c for name, c in checks.items() if name != "ping"), now=0.0, source="ci")
    add(state, checks["db"], checks["ping"], now=0.0, source="file:ops.yaml")
    report(state, checks["web"], True)
    report(state, checks["db"], True, False)
    report(state, checks["api"], False, False)
    report(state, checks["ping"], False, True)
    report(state, checks["lost"], False)
    beat(state, "node-a", now=100.0, labels={"zone": "a"})
    beat(state, "node-b", now=100.0, labels={"zone": "b"})
    assert state.expire_nodes(now=100.0, timeout_s=30.0) == ["node-c"]
    return Cluster(state, checks)


def test_the_cluster_has_one_check_of_each_status(cluster: Cluster) -> None:
    statuses = {name: status_of(cluster.state, c.digest) for name, c in cluster.checks.items()}
    assert statuses == {
        "web": OK, "db": FAILING, "queue": PENDING, "api": FAILING, "ping": OK,
        "orphan": DANGLING, "lost": FAILING,
    }  # fmt: skip


FILTERS = [
    CheckFilter(),
    *(CheckFilter(status=status) for status in CheckStatus),
    CheckFilter(node=NodeName("node-a")),
    CheckFilter(node=NodeName("ghost")),
    CheckFilter(source=SourceName("file:ops.yaml")),
    CheckFilter(query="nothing matches this"),
]


@pytest.mark.parametrize("check_filter", FILTERS, ids=repr)
def test_the_counts_are_of_every_check_whatever_the_filter(
    cluster: Cluster, check_filter: CheckFilter
) -> None:
    page = check_page(cluster.state, check_filter, offset=0, limit=1)
    assert page.statuses == {FAILING: 3, DANGLING: 1, PENDING: 1, OK: 2}
    assert list(page.statuses) == EVERY, "every status, in the dashboard's order"
    # Failing checks with a node, by node: "lost" has none.
    assert page.failing_by_node == {"node-a": 1, "node-b": 1}


def test_a_status_none_has_is_counted_as_zero() -> None:
    state = two_nodes()
    only = config("http", {"url": "http://only/"}, zone="a")
    add(state, only, now=0.0)
    page = check_page(state, CheckFilter(), offset=0, limit=10)
    assert page.statuses == {FAILING: 0, DANGLING: 0, PENDING: 1, OK: 0}
    assert page.failing_by_node == {}
    assert (page.matching, page.digests) == (1, [only.digest])


def test_the_order_is_failing_dangling_pending_ok_then_name_and_target(cluster: Cluster) -> None:
    # Within a status by name ("dns" < "exec" < "http" < "tcp"), then by target.
    assert cluster.page() == ["lost", "api", "db", "orphan", "queue", "ping", "web"]


def test_ties_of_name_and_target_are_ordered_by_digest() -> None:
    state = two_nodes()
    # Same name and target, different intervals: different digests.
    twins = [config("http", {"url": "http://same/"}, zone="a", interval_s=s) for s in (5, 10, 20)]
    add(state, *twins, now=0.0)
    page = check_page(state, CheckFilter(), offset=0, limit=10)
    assert page.digests == sorted(c.digest for c in twins)


@pytest.mark.parametrize(
    ("check_filter", "expected"),
    [
        (CheckFilter(status=FAILING), ["lost", "api", "db"]),
        (CheckFilter(status=DANGLING), ["orphan"]),
        (CheckFilter(status=PENDING), ["queue"]),
        (CheckFilter(status=OK), ["ping", "web"]),
        (CheckFilter(node=NodeName("node-a")), ["db", "queue", "web"]),
        (CheckFilter(node=NodeName("node-b")), ["api", "ping"]),
        (CheckFilter(node=NodeName("node-c")), []),  # expired: its checks have no node
        (CheckFilter(source=SourceName("file:ops.yaml")), ["db", "ping"]),
        (CheckFilter(source=SourceName("ci")), ["lost", "api", "db", "orphan", "queue", "web"]),
        (CheckFilter(source=SourceName("unknown")), []),
        (CheckFilter(status=FAILING, node=NodeName("node-a")), ["db"]),
        (CheckFilter(status=OK, source=SourceName("ci")), ["web"]),
        (CheckFilter(status=PENDING, node=NodeName("node-b")), []),
    ],
    ids=repr,
)
def test_filters_by_status_node_and_source(
    cluster: Cluster, check_filter: CheckFilter, expected: list[str]
) -> None:
    page = check_page(cluster.state, check_filter, offset=0, limit=100)
    assert cluster.names(page.digests) == expected
    assert page.matching == len(expected)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("tcp", ["db", "queue"]),  # name
        ("TCP", ["db", "queue"]),  # case-insensitive
        ("shop.EXAMPLE", ["web"]),  # target, whose URL has a capital letter
        (".example", ["lost", "api", "orphan", "web"]),  # targets
        ("5432", ["db"]),  # the port in host:port
        ("ping -c1", ["ping"]),  # an exec command line
        ("node-B", ["api", "ping"]),  # node
        ("file:OPS", ["db", "ping"]),  # source
        ("ci", ["lost", "api", "db", "orphan", "queue", "web"]),  # source "ci"
        ("nothing matches this", []),
    ],
)
def test_the_query_matches_name_target_node_and_source_case_insensitively(
    cluster: Cluster, query: str, expected: list[str]
) -> None:
    assert cluster.page(CheckFilter(query=query)) == expected


def test_the_query_matches_a_digest_by_its_prefix_only(cluster: Cluster) -> None:
    digest = cluster.checks["queue"].digest
    others = [c.digest for name, c in cluster.checks.items() if name != "queue"]
    # A prefix no other check's digest starts with, and that no other field contains.
    prefix = next(digest[:n] for n in range(6, len(digest)) if not any(
        d.startswith(digest[:n]) for d in others))  # fmt: skip
    assert cluster.page(CheckFilter(query=prefix)) == ["queue"]
    assert cluster.page(CheckFilter(query=prefix.upper())) == ["queue"]
    inside = digest[4:14]
    if not any(inside in d for d in others):
        assert cluster.page(CheckFilter(query=inside)) == [], "not a prefix: no match"


def test_query_and_the_other_filters_all_apply(cluster: Cluster) -> None:
    assert cluster.page(CheckFilter(query="example", status=FAILING)) == ["lost", "api"]
    assert cluster.page(CheckFilter(query="example", node=NodeName("node-a"))) == ["web"]
    assert cluster.page(CheckFilter(query="tcp", source=SourceName("file:ops.yaml"))) == ["db"]


@pytest.mark.parametrize(
    ("offset", "limit", "expected"),
    [
        (0, 100, ["lost", "api", "db", "orphan", "queue", "ping", "web"]),
        (0, 1, ["lost"]),
        (0, 3, ["lost", "api", "db"]),
        (3, 3, ["orphan", "queue", "ping"]),
        (6, 3, ["web"]),
        (7, 3, []),
        (1000, 10, []),
    ],
)
def test_offset_and_limit_slice_the_ordered_checks_and_matching_counts_them_all(
    cluster: Cluster, offset: int, limit: int, expected: list[str]
) -> None:
    page = check_page(cluster.state, CheckFilter(), offset=offset, limit=limit)
    assert cluster.names(page.digests) == expected
    assert page.matching == 7


def test_matching_counts_the_filtered_checks_not_the_page(cluster: Cluster) -> None:
    page = check_page(cluster.state, CheckFilter(node=NodeName("node-a")), offset=1, limit=1)
    assert cluster.names(page.digests) == ["queue"]
    assert page.matching == 3


def test_failing_by_node_counts_only_failing_checks_on_their_node() -> None:
    state = two_nodes()
    on_a = [config("http", {"url": f"http://a{i}/"}, zone="a") for i in range(3)]
    on_b = [config("http", {"url": f"http://b{i}/"}, zone="b") for i in range(2)]
    add(state, *on_a, *on_b, now=0.0)
    for check in on_a:
        report(state, check, False)
    report(state, on_b[0], True)
    report(state, on_b[1], False, True)  # recovered

    page = check_page(state, CheckFilter(status=OK), offset=0, limit=0)

    assert page.failing_by_node == {"node-a": 3}
    assert (page.matching, page.digests) == (2, [])


@pytest.mark.parametrize(("offset", "limit"), [(0, 5), (5, 5), (0, 200), (190, 50)])
def test_a_first_page_of_many_checks_is_the_start_of_the_whole_order(
    offset: int, limit: int
) -> None:
    """The first pages come from a partial selection (``heapq.nsmallest``), the others
    from a whole sort: both the same slice of one order."""
    state = two_nodes()
    checks = [config("http", {"url": f"http://svc-{i % 37}/{i}"}) for i in range(200)]
    add(state, *checks, now=1.0)
    for check in checks[::3]:
        report(state, check, False)
    whole = check_page(state, CheckFilter(), offset=0, limit=1000).digests
    page = check_page(state, CheckFilter(), offset=offset, limit=limit)
    assert page.digests == whole[offset : offset + limit]
    assert page.matching == 200


def test_the_overview_s_status_totals_add_up_to_the_checks(cluster: Cluster) -> None:
    """A failed check that lost its node counts once, as failing (as the filter lists
    it), not also as dangling."""
    fields = convert.overview_fields(
        cluster.state, CheckFilter(), offset=0, limit=100, now=1.0, now_wall=WALL
    )
    totals = fields["totals"]
    by_status = {s.value: totals[s.value] for s in CheckStatus}
    assert sum(by_status.values()) == totals["checks"] == len(cluster.checks)
    assert by_status == {"failing": 3, "dangling": 1, "pending": 1, "ok": 2}
    assert totals["dispatched"] == len(cluster.state.placement)


# ---------------------------------------------------------------------- slices


def many(state: ClusterState, count: int) -> list[CheckConfig]:
    checks = [config("http", {"url": f"http://svc-{n:02d}/"}, zone="a") for n in range(count)]
    add(state, *checks, now=0.0)
    return checks


def test_the_pass_yields_between_slices_and_finds_what_one_pass_finds() -> None:
    state = two_nodes()
    many(state, 10)
    steps = check_page_steps(state, CheckFilter(), offset=2, limit=5, slice_checks=3)
    yields = 0
    while True:
        try:
            next(steps)
            yields += 1
        except StopIteration as done:
            sliced = done.value
            break
    assert yields == 3  # slices of 3, 3, 3 and 1: a yield between each two
    assert sliced == check_page(state, CheckFilter(), offset=2, limit=5)
    assert sliced.statuses[PENDING] == 10


def test_a_check_removed_between_slices_is_skipped_and_one_added_is_not_seen() -> None:
    """The state may change while the dashboard's pass waits between slices (a PUT goes
    in between): the pass must neither fail nor count a check that is gone."""
    state = two_nodes()
    checks = many(state, 6)
    steps = check_page_steps(state, CheckFilter(), offset=0, limit=100, slice_checks=2)
    next(steps)  # the first slice (two checks) is counted
    later = [c for c in checks if c.digest in list(state.configs)[2:]]
    gone = later[0]
    state.replace_source(SourceName("api"), [c for c in checks if c is not gone], now=1.0)
    newcomer = config("http", {"url": "http://newcomer/"}, zone="a")
    add(state, newcomer, now=1.0, source="other")
    page = run_steps(steps)
    assert gone.digest not in page.digests
    assert newcomer.digest not in page.digests
    assert page.matching == page.statuses[PENDING] == 5


def test_the_overview_leaves_out_a_page_row_whose_check_went_during_the_pass() -> None:
    state = two_nodes()
    checks = many(state, 4)
    steps = convert.overview_steps(
        state, CheckFilter(), offset=0, limit=100, now=0.0, now_wall=WALL, slice_checks=2
    )
    next(steps)  # the first slice is counted, and its checks are on the page
    first = next(iter(state.configs))
    state.replace_source(SourceName("api"), [c for c in checks if c.digest != first], now=1.0)
    fields = run_steps(steps)
    rows = {row["digest"] for row in fields["page"]["checks"]}
    assert first not in rows  # no row (and no KeyError) for a check that is gone
    assert len(rows) == fields["totals"]["checks"] == 3
