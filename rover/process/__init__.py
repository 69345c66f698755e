"""Process discovery: which processes exist, and under which SkyWalking entity to report them.

Finders (``scan()`` -> the full current ``list[DiscoveredProcess]``, see ``finder.py``):

* ``scanner.RegexScannerFinder`` -- host processes matched by command-line regex;
* ``kubernetes.finder.KubernetesFinder`` -- processes of the pods on this node, named by
  analyzers (the ``kubernetes`` subpackage holds everything Kubernetes).

``finders_from_config`` builds the ones an ``AgentConfig`` activates. Shared by both:
``model`` (what discovery produces: ``DiscoveredProcess``, ``Entity``), ``procfs`` (the host's
processes through HostFS), ``profilable`` (support_ebpf_profiling), ``context`` and
``agent_host`` (the ``.Process`` and ``.Rover`` objects templates see), ``entity_templates``
(a rule's compiled names), ``log_once``. The ``template`` subpackage is Rover's Go-template
subset, independent of discovery. Nothing here imports the Kubernetes client until a
Kubernetes finder is built.
"""

from rover.process.from_config import finders_from_config

__all__ = ["finders_from_config"]
