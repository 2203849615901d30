"""The Responses API (``/v1/responses``) on top of the chat completions machinery: response objects
and their event sequence (:mod:`.events`), the store (:mod:`.store`), background responses whose
events a worker appends to a Redis Stream (:mod:`.background`, :mod:`.replay`). docs/responses.md."""
