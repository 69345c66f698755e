"""Kubernetes discovery: the processes of the pods on this node, named by analyzers.

``finder.KubernetesFinder`` is the finder. It keeps local copies of pods and services
(``watch``: list + watch, as client-go's reflector; ``model``: the parts of API objects kept),
maps containers to host processes by the container id in ``/proc/PID/cgroup`` (``cgroup``),
and lets each ``analyzer`` name them with templates over ``context`` (``.Pod``,
``.Container``); ``owner`` follows owner references, ``labels`` parses label selectors and
``client`` connects to the API server. This package imports nothing here, so its pure parts
load without the Kubernetes client.
"""
