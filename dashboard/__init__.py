"""rq-dashboard as ``bin/dashboard`` runs it: a separate process, apart from the API and the workers."""
