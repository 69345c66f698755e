"""Commands from the backend as plain values (spec section 3)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rover.backend.proto.common import Command_pb2


@dataclass(frozen=True)
class CommandData:
    """One command: its name and its arguments by key.

    Arguments are looked up by key, never by position (the OAP puts a
    ``SerialNumber`` first); of duplicate keys the last value wins.
    """

    name: str
    args: dict[str, str] = field(default_factory=dict)

    def arg(self, key: str, default: str | None = None) -> str | None:
        return self.args.get(key, default)


def commands_from_proto(message: Command_pb2.Commands) -> list[CommandData]:
    return [
        CommandData(name=c.command, args={kv.key: kv.value for kv in c.args})
        for c in message.commands
    ]


def command_to_proto(command: CommandData) -> Command_pb2.Command:
    out = Command_pb2.Command(command=command.name)
    for key, value in command.args.items():
        out.args.add(key=key, value=value)
    return out
