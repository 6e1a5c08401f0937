"""How a local cluster replicates: the pure parts of the cluster's configuration."""
from __future__ import annotations

import pytest

from floodgate.broker.cluster import LocalCluster, cluster_properties
from floodgate.errors import BrokerError
from floodgate.kafka_admin import cluster_replication


@pytest.mark.parametrize(("brokers", "expected"), [(1, (1, 1)), (2, (2, 1)), (3, (3, 2)), (5, (3, 2))])
def test_replication_follows_the_broker_count(brokers: int, expected: tuple[int, int]) -> None:
    assert cluster_replication(brokers) == expected


def test_internal_topics_are_replicated_like_floodgates() -> None:
    props = cluster_properties(3)
    assert props["offsets.topic.replication.factor"] == "3"
    assert props["transaction.state.log.replication.factor"] == "3"
    assert props["min.insync.replicas"] == props["transaction.state.log.min.isr"] == "2"


def test_a_cluster_has_at_least_two_nodes(tmp_path: object) -> None:
    from pathlib import Path

    with pytest.raises(BrokerError, match="at least 2 nodes"):
        LocalCluster(Path(str(tmp_path)), nodes=1, version="3.9.1", cache_dir=Path(str(tmp_path)))
