"""The smallest murmur app: one typed agent.

murmur worker app --broker redis://localhost:6379
murmur submit greet '{"name": "Ada"}' --wait --broker redis://localhost:6379
"""

import msgspec

from murmur import agent


class Person(msgspec.Struct):
    name: str


class Greeting(msgspec.Struct):
    message: str


@agent(timeout=10.0)
async def greet(person: Person) -> Greeting:
    """Say hello. The input is validated against Person before this runs."""
    return Greeting(message=f"Hello, {person.name}!")
