"""The entity part of a finder rule: layer, three name templates and labels, compiled once."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rover.process.finder import FinderConfigError
from rover.process.model import Entity
from rover.process.template import ObjectType, Template, compile_template


@dataclass(frozen=True)
class EntityTemplates:
    layer: str
    service_name: Template
    instance_name: Template
    process_name: Template
    labels: tuple[str, ...]

    @classmethod
    def compile(
        cls,
        where: str,
        data_type: ObjectType,
        *,
        layer: str,
        service_name: str,
        instance_name: str,
        process_name: str,
        labels: Iterable[str],
    ) -> EntityTemplates:
        """Raises :class:`FinderConfigError` for an empty field, ``TemplateError`` for a bad
        template; ``where`` names the rule in both (e.g. ``kubernetes.analyzers[2]``)."""
        fields = {
            "layer": layer,
            "service_name": service_name,
            "instance_name": instance_name,
            "process_name": process_name,
        }
        for name, value in fields.items():
            if not value.strip():
                raise FinderConfigError(f"{where}.{name} must not be empty")
        if isinstance(labels, str):  # would silently become one label per character
            raise TypeError(f"{where}.labels must be a sequence of labels, not a string")
        return cls(
            layer=layer.strip(),
            service_name=compile_template(service_name, data_type, f"{where}.service_name"),
            instance_name=compile_template(instance_name, data_type, f"{where}.instance_name"),
            process_name=compile_template(process_name, data_type, f"{where}.process_name"),
            labels=tuple(label.strip() for label in labels if label.strip()),
        )

    def render(self, data: object) -> Entity:
        """Raises ``RenderError`` when a template cannot be rendered for this process."""
        return Entity(
            layer=self.layer,
            service_name=self.service_name.render(data),
            instance_name=self.instance_name.render(data),
            process_name=self.process_name.render(data),
            labels=self.labels,
        )
