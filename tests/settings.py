"""What the suite runs its processes with, where a test's timing depends on it."""

#: Short heartbeats so that tests of dead workers take seconds.
HEARTBEAT_TTL = 2
