"""The in-process agent runtime: agents, their context, events and the run loop."""

from murmur.runtime.agent import Agent, agent
from murmur.runtime.context import TaskContext
from murmur.runtime.events import Emitter, EventSink, LogSink, task_sink
from murmur.runtime.retry import RetryPolicy
from murmur.runtime.runtime import AgentRuntime

__all__ = [
    "Agent",
    "AgentRuntime",
    "Emitter",
    "EventSink",
    "LogSink",
    "RetryPolicy",
    "TaskContext",
    "agent",
    "task_sink",
]
