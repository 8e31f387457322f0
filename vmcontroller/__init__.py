"""Exhibition VM Controller: keeps VM-hosted digital artworks running unattended."""

__version__ = "1.3.0"
