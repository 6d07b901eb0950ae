"""Every error `indexing` raises, sorted by what the caller must do.

```
IndexingError                      base; catch this to catch everything below
├── InputError                     the data given to the library is unusable: fix the input
│   ├── BadRowsError               too many rows were rejected (the report says which and why)
│   └── EmptyDataError             nothing left to train or evaluate on
├── ArtifactError                  a stored artifact cannot be served: keep the old index
│   ├── ArtifactNotFoundError      no such store, version or `current` pointer (on an object
│   │                              store: not visible yet, so retry later, never refuse)
│   ├── StoreUnavailableError      the object store did not answer (network, 5xx, throttled):
│   │                              retry later
│   ├── ManifestError              manifest missing, unreadable, of another format version,
│   │                              or disagreeing with the files (shape, dimension, count)
│   └── ChecksumError              a file's size or sha256 differs from the manifest (corrupt
│                                  or truncated)
├── QualityGateError               a build scored too far below the published one: not
│                                  published (force to override)
├── MissingDependencyError         an optional extra is not installed (the message names the
│                                  pip command)
└── UnknownItemError (KeyError)    an item id the loaded index does not hold
```

Foreign exceptions (OSError, JSON, FAISS RuntimeError, numpy ValueError) are translated at
the edge with ``raise ... from exc`` so callers only ever need this tree.
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "ArtifactNotFoundError",
    "BadRowsError",
    "ChecksumError",
    "EmptyDataError",
    "IndexingError",
    "InputError",
    "ManifestError",
    "MissingDependencyError",
    "QualityGateError",
    "StoreUnavailableError",
    "UnknownItemError",
]


class IndexingError(Exception):
    """Base of every error raised by `indexing`."""


class InputError(IndexingError):
    """The input data cannot be used as given."""


class BadRowsError(InputError):
    """More rows were rejected than the caller allowed."""


class EmptyDataError(InputError):
    """No usable events (or no test users) remain."""


class ArtifactError(IndexingError):
    """A stored artifact cannot be loaded; the caller should keep serving its old index."""


class ArtifactNotFoundError(ArtifactError):
    """The store, the version folder or the `current` pointer does not exist."""


class StoreUnavailableError(ArtifactError):
    """The object store could not be read or written just now; the same call may succeed
    later."""


class ManifestError(ArtifactError):
    """The manifest is missing, malformed, of an unsupported format, or contradicts the files."""


class ChecksumError(ArtifactError):
    """A file's size or sha256 does not match the manifest."""


class QualityGateError(IndexingError):
    """A new build's recall fell more than the allowed margin below the current one."""


class MissingDependencyError(IndexingError):
    """An optional extra (e.g. PyTorch for NCF) is not installed."""


class UnknownItemError(IndexingError, KeyError):
    """An item id that the loaded index does not hold."""
