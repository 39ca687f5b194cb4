"""murmur: run a fleet of signed, reliable Python agents behind a message broker.

>>> from murmur import agent, Worker, Client
"""

from murmur._version import __version__
from murmur.brokers.base import Broker
from murmur.client import Client, TaskHandle
from murmur.errors import (
    AgentError,
    BrokerUnavailable,
    ConfigurationError,
    EncodeError,
    MurmurError,
    TaskFailed,
)
from murmur.messages.envelopes import ErrorInfo, ResultMessage, RuntimeEvent, TaskMessage
from murmur.runtime import Agent, AgentRuntime, TaskContext, agent
from murmur.signing import Keyring
from murmur.worker import Worker

__all__ = [
    "Agent",
    "AgentError",
    "AgentRuntime",
    "Broker",
    "BrokerUnavailable",
    "Client",
    "ConfigurationError",
    "EncodeError",
    "ErrorInfo",
    "Keyring",
    "MurmurError",
    "ResultMessage",
    "RuntimeEvent",
    "TaskContext",
    "TaskFailed",
    "TaskHandle",
    "TaskMessage",
    "Worker",
    "__version__",
    "agent",
]
