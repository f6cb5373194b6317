"""Who runs a call's media when several replicas share one database, and how long until another may take it over.

A call belongs to the process that placed or answered it (`StoredCall.owner`, under a lease it renews). Every
process also records itself in the replica registry (`store.Replica`: the gRPC address it advertises, a heartbeat
renewed with its leases). Control of a live call that reaches another replica (EndCall, CallMedia) is forwarded to
the owner there; this module holds the facts that decision reads, and the refusal when the owner cannot be reached.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class CallOwner:
    """Another process owns the call and runs its media: where it said it can be reached, and until when it was
    known to be alive (its registry heartbeat) and to hold the call (the call's lease)."""

    call_id: str
    instance: str
    address: str  # "": it never recorded itself (a process from before the registry)
    heartbeat_expires_at: datetime | None
    lease_expires_at: datetime | None
    # When these were read, on the store's clock (the clock the heartbeat and lease were written on; each
    # replica's own clock may disagree with it).
    as_of: datetime

    def reachable(self) -> bool:
        """Worth dialling: it advertised an address and its heartbeat had not expired when it was read."""
        return bool(self.address) and self.heartbeat_expires_at is not None and self.heartbeat_expires_at > self.as_of

    def takeover_in(self, claim_interval: timedelta) -> timedelta:
        """How long until another replica ends the call for its owner: the lease runs out, and the next pass of a
        lease keeper (every `claim_interval`) claims it. At least one second, so a client never retries in a loop."""
        left = self.lease_expires_at - self.as_of if self.lease_expires_at is not None else timedelta(0)
        return max(left, timedelta(0)) + max(claim_interval, timedelta(seconds=1))


class CallOwnerUnreachable(Exception):
    """The call's owner is another replica that cannot be reached now (not registered, heartbeat expired, or it did
    not answer): nothing was changed. `retry_after` is when another replica will have taken the call over."""

    def __init__(self, owner: CallOwner, why: str, retry_after: timedelta) -> None:
        where = owner.address or "no address recorded"
        super().__init__(
            f"call {owner.call_id} is run by wacall instance {owner.instance} ({where}), which {why}; retry after "
            f"{retry_after.total_seconds():.0f} s, when another replica will have ended it if that instance is gone"
        )
        self.owner = owner
        self.why = why
        self.retry_after = retry_after
