"""Discovered processes <-> the messages of EBPFProcessService (spec 2.2, 4.2, 4.3)."""

from __future__ import annotations

from collections.abc import Iterable

from rover.backend.proto.common import Common_pb2
from rover.backend.proto.ebpf.profiling import Process_pb2
from rover.process.model import DiscoveredProcess, Entity, ProcessKind

ProcessKey = tuple[int, int, Entity]  # DiscoveredProcess.key

# the only property keepAlive carries (spec 4.3)
PING_PROPERTIES = ("support_ebpf_profiling",)

# oneof member names per kind: in EBPFProcessProperties and EBPFProcessDownstream alike
_MEMBER = {ProcessKind.HOST: "hostProcess", ProcessKind.KUBERNETES: "k8sProcess"}
_KIND = {member: kind for kind, member in _MEMBER.items()}


def entity_to_proto(entity: Entity) -> Process_pb2.EBPFProcessEntityMetadata:
    return Process_pb2.EBPFProcessEntityMetadata(
        layer=entity.layer,
        serviceName=entity.service_name,
        instanceName=entity.instance_name,
        processName=entity.process_name,
        labels=list(entity.labels),
    )


def entity_from_proto(message: Process_pb2.EBPFProcessEntityMetadata) -> Entity:
    return Entity(
        layer=message.layer,
        service_name=message.serviceName,
        instance_name=message.instanceName,
        process_name=message.processName,
        labels=tuple(message.labels),
    )


def _pairs(properties: dict[str, str]) -> list[Common_pb2.KeyStringValuePair]:
    return [Common_pb2.KeyStringValuePair(key=k, value=v) for k, v in properties.items()]


def process_to_proto(process: DiscoveredProcess) -> Process_pb2.EBPFProcessProperties:
    """The full report of one process, in the oneof member of its kind."""
    entity, properties = entity_to_proto(process.entity), _pairs(process.properties)
    if process.kind is ProcessKind.KUBERNETES:
        return Process_pb2.EBPFProcessProperties(
            k8sProcess=Process_pb2.EBPFKubernetesProcessMetadata(
                entity=entity, pid=process.pid, properties=properties
            )
        )
    return Process_pb2.EBPFProcessProperties(
        hostProcess=Process_pb2.EBPFHostProcessMetadata(
            entity=entity, pid=process.pid, properties=properties
        )
    )


def ping_to_proto(process: DiscoveredProcess) -> Process_pb2.EBPFProcessPingPkg:
    """Entity plus ``support_ebpf_profiling`` only; no pid (spec 4.3)."""
    necessary = {k: process.properties[k] for k in PING_PROPERTIES if k in process.properties}
    return Process_pb2.EBPFProcessPingPkg(
        entityMetadata=entity_to_proto(process.entity), properties=_pairs(necessary)
    )


def downstream_identity(
    message: Process_pb2.EBPFProcessDownstream,
) -> tuple[ProcessKind, int, Entity] | None:
    """(kind, pid, entity) the backend echoed for one id, None when no member is set."""
    member = message.WhichOneof("process")
    if member is None:
        return None
    echoed = getattr(message, member)
    return _KIND[member], echoed.pid, entity_from_proto(echoed.entityMetadata)


def match_process_ids(
    sent: Iterable[DiscoveredProcess], reply: Process_pb2.EBPFReportProcessDownstream
) -> dict[ProcessKey, str]:
    """processId of each sent process the reply accepted, matched as Rover does (spec 4.2).

    Order is not relied on: a sent process matches a reply entry of the same
    oneof kind, the same pid and a matching entity (labels compared as a set).
    Sent processes without a match are absent from the result.
    """
    by_kind_pid: dict[tuple[ProcessKind, int], list[tuple[Entity, str]]] = {}
    for entry in reply.processes:
        identity = downstream_identity(entry)
        if identity is not None:
            kind, pid, entity = identity
            by_kind_pid.setdefault((kind, pid), []).append((entity, entry.processId))
    ids: dict[ProcessKey, str] = {}
    for process in sent:
        for entity, process_id in by_kind_pid.get((process.kind, process.pid), ()):
            if process.entity.matches(entity):
                ids[process.key] = process_id
                break
    return ids
