"""The ``.Process`` and ``.Rover`` objects every finder's templates can use.

Names follow Rover (``pkg/process/finders/base/template.go``). Rover's process object also
exposes gopsutil's own methods; the ones that name the same things are accepted as aliases
(``Name``, ``Exe``, ``Cmdline``, ``Cwd``), as is ``Command``.
"""

from __future__ import annotations

import os

from rover.hostfs import HostFS
from rover.process.agent_host import AgentHost
from rover.process.procfs import HostProcess
from rover.process.template import Kind, Member, ObjectType, RenderError


class ProcessView:
    """One host process as templates see it."""

    def __init__(self, hostfs: HostFS, process: HostProcess) -> None:
        self.hostfs = hostfs
        self.process = process

    def exe_file_path(self) -> str:
        if not self.process.exe_path:
            raise RenderError(f"cannot read the executable path of process {self.process.pid}")
        return self.process.exe_path

    def exe_name_in_command_line(self) -> str:
        if not self.process.cmdline:
            raise RenderError(f"process {self.process.pid} has an empty command line")
        return self.process.cmdline[0]

    def work_dir(self) -> str:
        try:
            return os.readlink(self.hostfs.proc_path(self.process.pid, "cwd"))
        except OSError as exc:
            raise RenderError(
                f"cannot read the working directory of process {self.process.pid}: {exc}"
            ) from None


def _host_ipv4(rover: AgentHost, interface: str) -> str:
    address = rover.ipv4(interface)
    if not address:
        raise RenderError(f"no IPv4 address on network interface {interface!r}")
    return address


def _host_ipv6(rover: AgentHost, interface: str) -> str:
    address = rover.ipv6(interface)
    if not address:
        raise RenderError(f"no IPv6 address on network interface {interface!r}")
    return address


def _command_line(view: ProcessView) -> str:
    return view.process.command_line


_process_members = {
    "Pid": Member(Kind.INT, lambda view: view.process.pid),
    "ExeName": Member(Kind.STRING, lambda view: view.process.exe_name),
    "ExeFilePath": Member(Kind.STRING, ProcessView.exe_file_path),
    "CommandLine": Member(Kind.STRING, _command_line),
    "ExeNameInCommandLine": Member(Kind.STRING, ProcessView.exe_name_in_command_line),
    "WorkDir": Member(Kind.STRING, ProcessView.work_dir),
}
_process_aliases = {
    "Name": "ExeName",
    "Exe": "ExeFilePath",
    "Cmdline": "CommandLine",
    "Command": "CommandLine",
    "Cwd": "WorkDir",
}

PROCESS = ObjectType(
    "Process",
    {**_process_members, **{alias: _process_members[n] for alias, n in _process_aliases.items()}},
)

ROVER = ObjectType(
    "Rover",
    {
        "InstanceID": Member(Kind.STRING, lambda rover: rover.instance_id),
        "HostName": Member(Kind.STRING, lambda rover: rover.host_name),
        "HostIPV4": Member(Kind.STRING, _host_ipv4, params=(Kind.STRING,)),
        "HostIPV6": Member(Kind.STRING, _host_ipv6, params=(Kind.STRING,)),
    },
)
