"""L5: the aiohttp adapter (DICOMweb at /dicom-web, WADO-URI, health). Calls services/ only."""
from .app import create_app

__all__ = ["create_app"]
