"""The HTTP API: OpenAI's wire format in, rq jobs out, results and streams back."""
