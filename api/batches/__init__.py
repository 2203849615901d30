"""The Batch API: files uploaded once, their request lines run through the model queues in the lowest
band by a runner in the API processes, and output files (docs/batches.md).

* :mod:`api.batches.files`: the files (``/v1/files``), in a folder every API process shares.
* :mod:`api.batches.store`: the batch objects, in Redis.
* :mod:`api.batches.lines`: reading and checking an input file's request lines.
* :mod:`api.batches.execute`: one line run as the request it describes, through the same view.
* :mod:`api.batches.runner`: the thread that takes a batch's lease and runs it to its end.
"""
