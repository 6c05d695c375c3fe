"""Records for the store tests: configs using every field, a delta holding every kind
of record, and a comparable view of a snapshot (CheckConfig compares by identity)."""

from __future__ import annotations

from dataclasses import replace

from dispatcher.core.model import CheckConfig, Digest, NodeName, SourceName, make_config
from dispatcher.core.snapshot import NodeRecord, Snapshot, StateDelta

S1, S2 = SourceName("s1"), SourceName("s2")
N1, N2 = NodeName("n1"), NodeName("n2")
LEGACY_DIGEST = Digest("0123456789abcdef" * 2)


def config_view(config: CheckConfig) -> tuple[object, ...]:
    """Every field (CheckConfig compares by identity)."""
    return (
        config.digest,
        config.name,
        config.instances,
        config.init_config,
        config.interval_s,
        config.timeout_s,
        dict(config.node_selector),
        config.weight,
    )


def view(snapshot: Snapshot) -> dict[str, object]:
    return {
        "configs": {d: config_view(c) for d, c in snapshot.configs.items()},
        "sources": dict(snapshot.sources),
        "placement": dict(snapshot.placement),
        "nodes": {n: (dict(r.labels), r.capacity, r.cordoned) for n, r in snapshot.nodes.items()},
    }


def rich_config() -> CheckConfig:
    """A config using every field, with nested and non-ASCII values."""
    return make_config(
        name="http",
        instances=[
            {"url": "https://shop.example/healthz", "headers": {"Host": "shop"}, "tags": ["a"]},
            {"url": "https://café.example/", "expected_status": [200, 204], "verify": False},
        ],
        init_config={"timeout": 3, "nested": {"list": [1, 2.5, None, True]}},
        interval_s=20,
        timeout_s=7.5,
        node_selector={"zone": "eu-1", "disk": "ssd"},
        weight=2.25,
    )


def plain(label: str) -> CheckConfig:
    return make_config(name="tcp", instances=[{"host": label, "port": 443}])


def full_delta() -> tuple[StateDelta, list[CheckConfig]]:
    configs = [rich_config(), plain("a"), plain("b")]
    # A config whose stored digest is not what make_config would compute today (an
    # older digest scheme): the stored digest is its identity and must be kept.
    legacy = replace(plain("legacy"), digest=LEGACY_DIGEST)
    configs.append(legacy)
    delta = StateDelta(
        configs={c.digest: c for c in configs},
        sources={
            S1: frozenset(c.digest for c in configs[:3]),
            S2: frozenset({configs[1].digest, legacy.digest}),
        },
        placement={configs[0].digest: N1, configs[1].digest: N2, legacy.digest: N1},
        nodes={
            N1: NodeRecord(labels={"zone": "eu-1", "disk": "ssd"}, capacity=8, cordoned=False),
            N2: NodeRecord(labels={}, capacity=1, cordoned=True),
        },
    )
    return delta, configs


def big_delta(count: int) -> StateDelta:
    """``count`` checks in one source, placed on two nodes."""
    configs = [plain(f"svc-{i}") for i in range(count)]
    return StateDelta(
        configs={c.digest: c for c in configs},
        sources={S1: frozenset(c.digest for c in configs)},
        placement={c.digest: (N1 if i % 2 else N2) for i, c in enumerate(configs)},
        nodes={
            N1: NodeRecord(labels={}, capacity=2, cordoned=False),
            N2: NodeRecord(labels={"a": "b"}, capacity=1, cordoned=False),
        },
    )


def deletion_of(delta: StateDelta) -> StateDelta:
    """Deletes every record ``delta`` names."""
    return StateDelta(
        configs=dict.fromkeys(delta.configs),
        sources=dict.fromkeys(delta.sources),
        placement=dict.fromkeys(delta.placement),
        nodes=dict.fromkeys(delta.nodes),
    )


def as_snapshot(delta: StateDelta) -> Snapshot:
    """What a store holds after writing ``delta`` into an empty store."""
    return Snapshot(
        configs={k: v for k, v in delta.configs.items() if v is not None},
        sources={k: v for k, v in delta.sources.items() if v is not None},
        placement={k: v for k, v in delta.placement.items() if v is not None},
        nodes={k: v for k, v in delta.nodes.items() if v is not None},
    )
