"""pacsd: a DICOMweb-native medical image archive with plugins (cloud film)."""
__version__ = "0.1.0"

from .hookspecs import hookimpl  # noqa: E402  (the decorator plugins use)

__all__ = ["__version__", "hookimpl"]
