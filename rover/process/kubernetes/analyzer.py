"""Analyzers: rules that decide which entity a container's process is reported under.

Every active analyzer whose filters all pass yields one entity, so one process may be reported
several times (e.g. under ``MESH`` and ``K8S_SERVICE``), as in Rover.
"""

from __future__ import annotations

from rover.config import AnalyzerConfig
from rover.process.entity_templates import EntityTemplates
from rover.process.finder import FinderConfigError
from rover.process.model import Entity
from rover.process.template import ObjectType, compile_filter


class Analyzer:
    """One compiled analyzer; raises at construction for any invalid filter or template."""

    def __init__(self, index: int, config: AnalyzerConfig, data_type: ObjectType) -> None:
        where = f"kubernetes.analyzers[{index}]"
        self.index = index
        self.active = config.active
        self.filters = []
        for position, expression in enumerate(config.filters):
            if not expression.strip():
                raise FinderConfigError(f"{where}.filters[{position}] must not be empty")
            self.filters.append(
                compile_filter(expression, data_type, f"{where}.filters[{position}]")
            )
        self.entity = EntityTemplates.compile(
            where,
            data_type,
            layer=config.layer,
            service_name=config.service_name,
            instance_name=config.instance_name,
            process_name=config.process_name,
            labels=config.labels,
        )

    def entity_for(self, data: object) -> Entity | None:
        """The entity when every filter passes, else None; raises ``RenderError``."""
        if not all(f.matches(data) for f in self.filters):
            return None
        return self.entity.render(data)
