"""murmur examples; each folder has a README saying how to run it."""
