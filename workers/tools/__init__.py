"""Tool calling in the worker: formats, parsers, the tool_choice grammar, the template's view.

Parsing runs here, in the worker, not in the API: the worker has the model's tokenizer and chat
template (the format is detected from the template, markers may be special tokens only it can
decode), and the grammar that enforces ``tool_choice`` must write exactly what the parser reads, so
both come from one :class:`ToolFormat`. The API only maps the typed results and deltas
(``shared.tools``) onto OpenAI's shapes, the same for SSE and the WebSocket.

* :mod:`workers.tools.formats`: ``hermes``, ``llama3_json``, ``mistral``, a parser and grammar tags each;
* :mod:`workers.tools.parsing`: the incremental reader the programs run on (split-invariant);
* :mod:`workers.tools.grammar`: a job's :class:`~shared.tools.ToolUse` as a ``TagsConstraint``;
* :mod:`workers.tools.template`: history for chat templates, whether a template renders tools, and
  which format it teaches.
"""

from __future__ import annotations

from workers.tools.formats import FORMATS, ToolFormat
from workers.tools.template import detect_format, renders_tools

__all__ = ["FORMATS", "ToolFormat", "model_tool_format"]


def model_tool_format(configured: str | None, template: str | None) -> ToolFormat | None:
    """A model's tool-call format: the models file's ``tool_parser``, else the one its chat template
    teaches; None when the template does not render tools (a request with tools is then a 400)."""
    if not template or not renders_tools(template):
        return None
    if configured is not None:
        return FORMATS[configured]
    return detect_format(template)
