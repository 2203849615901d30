"""What the suite runs its processes with, where a test's timing depends on it."""

#: Short heartbeats so that tests of dead workers take seconds.
HEARTBEAT_TTL = 2

#: The spare chat model of the suite's models file (tests/conftest.py): two slots, at most three
#: queued jobs, served by no session worker, so a test can fill it and kill its workers.
SPARE = "tiny-chat-spare"
SPARE_CONTEXT_LENGTH = 16384

#: ``max_tokens`` of a spare job meant to hold its slot until the test stops it. Greedy decoding of
#: the random model never ends by itself; a quiet 2-core machine makes ~1000 tokens a second per
#: slot, so even a machine several times faster runs such a job for seconds, longer than any wait
#: a test asserts around it.
LONG_TOKENS = 16000
