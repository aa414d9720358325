"""Named exceptions. The app maps InvalidInput to HTTP 4xx with the message as the reason."""


class SparseSightError(Exception):
    """Base class of every error SparseSight raises on purpose."""


class InvalidInput(SparseSightError, ValueError):
    """The input (image, label, id, parameter) cannot be used; the message says why and what to do."""


class UnknownModel(SparseSightError, KeyError):
    """A model name that is not registered."""

    def __str__(self):  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "unknown model"


class BundleError(SparseSightError, ValueError):
    """A result bundle that does not follow the protocol of bundle.py."""


class TooLarge(InvalidInput):
    """An input over a configured size limit (voxels, bytes); the message names the limit. HTTP 413."""
