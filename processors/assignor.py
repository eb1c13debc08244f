"""Partition assignment for the processors' group: every line's frame partitions spread over the workers.

faust's ``PartitionAssignor`` puts every subscribed topic with the same partition count into one
co-partitioned group and gives partition i of all of them to one worker, so with L lines x P
partitions only P workers ever get work. Co-partitioning matters for tables (a table's changelog
partition must sit with the source partition that updates it); the processor keeps no tables, a
frame is scored on its own, so each frame partition is placed on its own here: W workers share
L x P partitions, each holding the floor or the ceiling of L*P/W, and keep what they held when that
stays even (sticky). Any other topic (a table's changelog and its source, should the app get one)
keeps faust's co-partitioned assignment.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from aiokafka.cluster import ClusterMetadata
from faust.assignor import PartitionAssignor
from faust.assignor.client_assignment import ClientAssignment
from faust.assignor.cluster_assignment import ClusterAssignment
from faust.assignor.copartitioned_assignor import CopartitionedAssignor

from lineguard.schemas import topics

log = logging.getLogger("lineguard.processor.assignor")

TopicPartition = tuple[str, int]


def spread_partitions(partitions: Mapping[str, int], subscriptions: Mapping[str, Collection[str]],
                      previous: Mapping[str, Iterable[TopicPartition]]) -> dict[str, set[TopicPartition]]:
    """Place each partition of ``partitions`` (topic -> partition count) on one member.

    ``subscriptions``: member -> the topics it subscribes to (a partition only goes to a subscriber);
    ``previous``: member -> the partitions it held. When every member subscribes to every topic, each
    member ends with the floor or the ceiling of partitions/members, and keeps as many of its previous
    partitions as that allows: first up to the floor each, then one more for those that held more.
    The rest go to the member holding fewest, then fewest of the same topic (a line's partitions land
    on different workers).
    """
    members = sorted(subscriptions)
    if not members:
        return {}
    wanted = sorted((topic, p) for topic, count in partitions.items() for p in range(count)
                    if any(topic in subscriptions[m] for m in members))
    floor_share, extra = divmod(len(wanted), len(members))
    unplaced = set(wanted)
    held: dict[str, list[TopicPartition]] = {
        m: [tp for tp in sorted(set(previous.get(m, ()))) if tp in unplaced and tp[0] in subscriptions[m]]
        for m in members}
    owned: dict[str, set[TopicPartition]] = {m: set() for m in members}

    def place(member: str, tp: TopicPartition) -> None:
        owned[member].add(tp)
        unplaced.discard(tp)

    for m in members:  # a partition two members claim (a zombie's stale view) stays with the first
        for tp in [tp for tp in held[m] if tp in unplaced][:floor_share]:
            place(m, tp)
    for m in sorted(members, key=lambda m: -len(held[m])):  # the ceiling's slots: to those that held most
        leftover = [tp for tp in held[m] if tp in unplaced]
        if extra and leftover and len(owned[m]) == floor_share:
            place(m, leftover[0])
            extra -= 1
    rank = {m: i for i, m in enumerate(members)}
    for tp in sorted(unplaced):
        takers = [m for m in members if tp[0] in subscriptions[m]]
        place(min(takers, key=lambda m: (len(owned[m]), sum(t == tp[0] for t, _ in owned[m]), rank[m])), tp)
    return owned


class LineSpreadingAssignor(PartitionAssignor):
    """faust's assignor, with each frame topic's partitions placed independently (:func:`spread_partitions`).

    Installed with ``faust.App(..., PartitionAssignor=LineSpreadingAssignor)``. The protocol name
    stays faust's, so a group can be upgraded one worker at a time (the leader's code decides).
    """

    spread_topic = re.compile(topics.pattern("frames"))

    def _perform_assignment(self, cluster: ClusterMetadata, member_metadata: Mapping[str, Any]) -> Any:
        clients_metadata = {m: self._get_client_metadata(md) for m, md in member_metadata.items()}
        subscriptions = {m: list(md.subscription) for m, md in member_metadata.items()}
        self._update_member_urls(clients_metadata)
        spread = {t for sub in subscriptions.values() for t in sub if self.spread_topic.match(t)}
        assignments, topic_groups, partitions_by_topic = self._copartitioned_assignments(
            cluster, clients_metadata, {m: [t for t in sub if t not in spread] for m, sub in subscriptions.items()})

        counts: dict[str, int] = {}
        for topic in sorted(spread):
            count = len(cluster.partitions_for_topic(topic) or ())
            if count == 0:
                log.warning("ignoring frame topic %s: not in the cluster's metadata", topic)
                continue
            counts[topic] = partitions_by_topic[topic] = count
            topic_groups[topic] = max(topic_groups.values(), default=-1) + 1  # each its own group
        previous = {m: [(t, p) for t, ps in md.assignment.actives.items() if t in counts for p in ps]
                    for m, md in clients_metadata.items()}
        placed = spread_partitions(counts, subscriptions, previous)
        for member, tps in placed.items():
            for topic, partition in sorted(tps):
                assignments[member].actives.setdefault(topic, []).append(partition)
        log.info("%d frame partitions over %d workers: %s each", sum(counts.values()), len(placed),
                 sorted((len(tps) for tps in placed.values()), reverse=True))

        assignments = self._global_table_standby_assignments(assignments, partitions_by_topic)
        return self._protocol_assignments(assignments, self._get_changelog_distribution(assignments),
                                          self._get_external_topic_distribution(assignments), topic_groups)

    def _copartitioned_assignments(
        self, cluster: ClusterMetadata, clients_metadata: Mapping[str, Any], subscriptions: Mapping[str, list[str]],
    ) -> tuple[dict[str, ClientAssignment], dict[str, int], dict[str, int]]:
        """faust's own assignment of the other topics: each co-partitioned group by CopartitionedAssignor."""
        cluster_assignment = ClusterAssignment()
        for member, metadata in clients_metadata.items():
            cluster_assignment.add_client(member, subscriptions[member], metadata)
        groups = self._get_copartitioned_groups(cluster_assignment.topics(), cluster, dict(subscriptions))
        assignments = {m: ClientAssignment(actives={}, standbys={}) for m in clients_metadata}
        topic_groups: dict[str, int] = {}
        partitions_by_topic: dict[str, int] = {}
        for group_id, (num_partitions, co_subscribed) in enumerate(sorted(groups.items())):
            for group_topics in co_subscribed:
                for topic in group_topics:
                    topic_groups[topic] = group_id
                    partitions_by_topic[topic] = num_partitions
                assignor = CopartitionedAssignor(
                    topics=group_topics, cluster_asgn=cluster_assignment.copartitioned_assignments(group_topics),
                    num_partitions=num_partitions, replicas=self.replicas)
                for member, copartitioned in assignor.get_assignment().items():
                    assignments[member].add_copartitioned_assignment(copartitioned)
        return assignments, topic_groups, partitions_by_topic

    def on_assignment(self, assignment: Any) -> None:
        super().on_assignment(assignment)
        frames = sorted(tp for tp in self.assigned_actives() if self.spread_topic.match(tp.topic))
        log.info("this worker holds %d frame partitions: %s", len(frames),
                 ", ".join(f"{tp.topic}[{tp.partition}]" for tp in frames) or "none")
