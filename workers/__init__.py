"""Worker processes: load models once, take jobs from rq queues, batch them, publish events."""
