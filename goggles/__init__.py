"""goggles: automatic image labeling with affinity coding (GOGGLES, Das et al.)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
