"""Benchmarks of the Exhibition VM Controller against a real libvirtd (``scripts/bench``).

Not part of the shipped package: it starts processes of its own (virsh, wrk,
the controller) and creates its own ``vmctl-bench-*`` domain.
"""
