"""Request bodies as clients send them (OpenAI's wire format), validated with pydantic."""
