"""The publisher side: submit tasks by agent name, collect one result per task."""

from murmur.client.client import Client, ClientStats, TaskHandle

__all__ = ["Client", "ClientStats", "TaskHandle"]
