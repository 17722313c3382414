"""pacsd: a DICOMweb-native medical image archive with plugins (cloud film)."""
__version__ = "0.1.0"
