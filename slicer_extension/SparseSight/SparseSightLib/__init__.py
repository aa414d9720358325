"""SparseSight Slicer module library: REST client, bundle -> scene, logic. No Qt, no sparsesight import:
the module talks to the server only, and runs the same on slicer-core (tests) as inside Slicer."""
from .client import ServerError, SparseSightClient, train_progress  # noqa: F401
