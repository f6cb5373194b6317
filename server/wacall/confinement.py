"""Server-side files a client names (audio to play, where to record) stay inside the directories configured for them.

A name resolves inside its directory with every symlink followed (os.path.realpath), so `..`, an absolute path
elsewhere and a link pointing out all land outside and are refused.
"""

from __future__ import annotations

import os


class OutsideDirectory(ValueError):
    """The name resolves outside the configured directory."""

    def __init__(self, name: str, directory: str) -> None:
        super().__init__(
            f"{name!r} is not inside {directory}: name a file in that directory (--media-dir, --recordings-dir)"
        )
        self.name = name
        self.directory = directory


def inside(directory: str, name: str) -> str:
    """The real path `name` denotes inside `directory` (relative names are taken from there), or OutsideDirectory."""
    root = os.path.realpath(directory)
    resolved = os.path.realpath(os.path.join(root, name))
    if resolved == root or os.path.commonpath([root, resolved]) != root:
        raise OutsideDirectory(name, directory)
    return resolved
