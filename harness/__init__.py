"""What the tests and the benchmark share to drive real processes (never part of the server)."""
