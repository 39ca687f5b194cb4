"""Test support: real broker servers (servers.py) and the fixtures built on them (fixtures.py)."""
