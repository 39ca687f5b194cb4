"""The worker: competing-consumer task execution with leases, ledger and heartbeats."""

from murmur.worker.worker import Worker

__all__ = ["Worker"]
