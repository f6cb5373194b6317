"""Media routes for connected calls. Each route is a `MediaAdapter` behind one small interface (`base.py`)."""

from wacall_adapters.base import CallLeg, MediaAdapter

__all__ = ["CallLeg", "MediaAdapter"]
