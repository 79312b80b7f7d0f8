"""lineloop at the edge: signed build manifests, fleets, and the gateway's edge agent."""

from lineloop.edge.fleets import Fleet, load_fleets
from lineloop.edge.manifest import Artifact, BuildManifest, ManifestError, key_id, load_trusted_keys, verify_manifest
from lineloop.edge.settings import EdgeSettings

__all__ = [
    "Artifact",
    "BuildManifest",
    "EdgeSettings",
    "Fleet",
    "ManifestError",
    "key_id",
    "load_fleets",
    "load_trusted_keys",
    "verify_manifest",
]
