"""Process discovery: which processes exist, and under which SkyWalking entity to report them.

Finders (``scan()`` -> the full current ``list[DiscoveredProcess]``, see ``finder.py``):

* ``scanner.RegexScannerFinder`` -- host processes matched by command-line regex;
* ``kubernetes.KubernetesFinder`` -- processes of the pods on this node, named by analyzers.

``finders_from_config`` builds the ones an ``AgentConfig`` activates. Building blocks:
``procfs`` (reading /proc through HostFS), ``cgroup`` (container id of a process), ``template``
(Rover's Go-template subset), ``profilable`` (support_ebpf_profiling). Nothing here imports the
Kubernetes client until a Kubernetes finder is built.
"""

from rover.process.from_config import finders_from_config

__all__ = ["finders_from_config"]
