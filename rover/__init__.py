"""rover: an eBPF profiling agent for Apache SkyWalking."""

__version__ = "0.1.0"
