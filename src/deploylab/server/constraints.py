"""`response_format` and `tools` -> the engine's constrained decoding, and back.

`plan` turns a request into a `Constraint`: the grammar the engine enforces while decoding
(`StructuredOutput`), the tool instructions added to the prompt, and how to read the output:

- `response_format` `json_object` / `json_schema`: the output is JSON (any object / the
  schema's), enforced token by token.
- `tools` with `tool_choice` `none`: tools are ignored (as OpenAI does); `auto` (the default
  with tools): free text, or calls written `<tool_call>{"name": ..., "arguments": {...}}
  </tool_call>` whose JSON the grammar enforces; `required`: a JSON array of one or more
  calls (exactly one with `parallel_tool_calls: false`); a named function: JSON arguments
  for that function.

Combinations that cannot be honoured (tools and a JSON `response_format` at once, a named
function that is not in `tools`, `tool_choice` without `tools`) are 400s, never ignored.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from deploylab.engine.structured import StructuredOutput
from deploylab.errors import InvalidRequestError
from deploylab.server.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    NamedToolChoice,
    Tool,
)

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
Mode = Literal["text", "json", "auto", "required", "named"]


@dataclass
class Constraint:
    """What a request constrains: the grammar, extra prompt text and how to parse output."""

    mode: Mode = "text"
    structured: StructuredOutput | None = None
    system_prompt: str = ""  # tool instructions, prepended as (or to) the system message
    function: str = ""  # the named function's name

    @property
    def tools(self) -> bool:
        """True when the output may hold tool calls."""
        return self.mode in ("auto", "required", "named")


def plan(req: CompletionRequest | ChatCompletionRequest) -> Constraint:
    """The request's constraint; an unsupported combination raises InvalidRequestError."""
    constraint = _plan(req)
    if constraint.structured is not None and req.min_tokens:
        raise InvalidRequestError(
            "min_tokens cannot be combined with response_format or tools: the grammar decides "
            "where the output ends. Drop min_tokens.",
            param="min_tokens",
        )
    return constraint


def _plan(req: CompletionRequest | ChatCompletionRequest) -> Constraint:
    fmt = req.response_format
    json_fmt = fmt is not None and fmt.type != "text"
    if isinstance(req, CompletionRequest) or not req.tools:
        if isinstance(req, ChatCompletionRequest) and req.tool_choice not in (None, "none"):
            raise InvalidRequestError(
                "tool_choice needs a non-empty `tools` list; add the tools or drop tool_choice.",
                param="tool_choice",
            )
        return _response_format(req) if json_fmt else Constraint()
    choice = req.tool_choice or "auto"
    if choice == "none":
        return _response_format(req) if json_fmt else Constraint()
    if json_fmt:
        raise InvalidRequestError(
            "response_format json_object/json_schema cannot be combined with tools (unless "
            "tool_choice is 'none'); ask for one or the other.",
            param="response_format",
        )
    tools = req.tools
    if isinstance(choice, NamedToolChoice):
        named = [t for t in tools if t.function.name == choice.function.name]
        if not named:
            raise InvalidRequestError(
                f"tool_choice names the function '{choice.function.name}', which is not in "
                f"`tools` ({', '.join(t.function.name for t in tools)}).",
                param="tool_choice",
            )
        schema = _parameters(named[0])
        spec = StructuredOutput("json_schema", json.dumps(schema), param="tools")
        prompt = _instructions(named, "Reply with the JSON arguments of this function only.")
        return Constraint("named", spec, prompt, named[0].function.name)
    calls = {"anyOf": [_call_schema(t) for t in tools]}
    if choice == "required":
        array: dict[str, Any] = {"type": "array", "items": calls, "minItems": 1}
        if not req.parallel_tool_calls:
            array["maxItems"] = 1
        spec = StructuredOutput("json_schema", json.dumps(array), param="tools")
        how = 'Reply with a JSON list of calls: [{"name": ..., "arguments": {...}}].'
        return Constraint("required", spec, _instructions(tools, how))
    repeat = "+" if req.parallel_tool_calls else ""
    lark = (
        "start: TEXT | calls\n"
        f'calls: ("{CALL_OPEN}" call "{CALL_CLOSE}"){repeat}\n'
        f"call: %json {json.dumps(calls)}\n"
        # free text may not start with '<', so a call is never written outside the grammar
        "TEXT: /[^<](.|\\n)*/\n"
    )
    how = (
        f'To call a function, reply with {CALL_OPEN}{{"name": ..., "arguments": {{...}}}}'
        f"{CALL_CLOSE}; otherwise answer normally."
    )
    return Constraint(
        "auto", StructuredOutput("lark", lark, param="tools"), _instructions(tools, how)
    )


def _response_format(req: CompletionRequest | ChatCompletionRequest) -> Constraint:
    fmt = req.response_format
    assert fmt is not None
    if fmt.type == "json_object":
        return Constraint("json", StructuredOutput("json_object"))
    assert fmt.json_schema is not None
    schema = json.dumps(fmt.json_schema.schema_)
    return Constraint("json", StructuredOutput("json_schema", schema))


def _parameters(tool: Tool) -> dict[str, Any]:
    """The arguments' schema; unlisted top-level keys are refused unless the schema allows
    them (a small model otherwise invents extra arguments until max_tokens)."""
    schema = dict(tool.function.parameters or {"type": "object"})
    if "properties" in schema:
        schema.setdefault("additionalProperties", False)
    return schema


def _call_schema(tool: Tool) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "name": {"const": tool.function.name},
            "arguments": _parameters(tool),
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _instructions(tools: list[Tool], how: str) -> str:
    lines = ["You can call these functions:"]
    for t in tools:
        f = t.function
        entry = {"name": f.name, "description": f.description, "parameters": _parameters(t)}
        lines.append(json.dumps(entry))
    lines.append(how)
    return "\n".join(lines)


def render_messages(messages: list[ChatMessage], constraint: Constraint) -> list[dict[str, str]]:
    """Messages for the chat template: tool instructions merged into the system message,
    earlier tool calls and tool results written as text."""
    out: list[dict[str, str]] = []
    for m in messages:
        text = m.text()
        if m.tool_calls:
            calls = [
                CALL_OPEN
                + json.dumps({"name": c.function.name, "arguments": _loads(c.function.arguments)})
                + CALL_CLOSE
                for c in m.tool_calls
            ]
            text = (text + "\n" if text else "") + "".join(calls)
        if m.role == "tool" and m.tool_call_id:
            text = f"[result of {m.tool_call_id}] {text}"
        out.append({"role": m.role, "content": text})
    if constraint.system_prompt:
        if out and out[0]["role"] in ("system", "developer"):
            out[0]["content"] += "\n\n" + constraint.system_prompt
        else:
            out.insert(0, {"role": "system", "content": constraint.system_prompt})
    return out


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_tool_calls(constraint: Constraint, text: str) -> list[dict[str, Any]] | None:
    """OpenAI `tool_calls` from a finished output, or None when it holds no (complete) call."""
    pairs: list[tuple[str, Any]] = []
    try:
        if constraint.mode == "named":
            pairs = [(constraint.function, json.loads(text))]
        elif constraint.mode == "required":
            pairs = [(c["name"], c["arguments"]) for c in json.loads(text)]
        elif constraint.mode == "auto" and text.startswith(CALL_OPEN):
            for part in text.split(CALL_CLOSE)[:-1]:
                call = json.loads(part.removeprefix(CALL_OPEN))
                pairs.append((call["name"], call["arguments"]))
    except (json.JSONDecodeError, KeyError, TypeError):
        return None  # cut short (finish_reason "length"): returned as content
    if not pairs:
        return None
    return [
        {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)},
        }
        for name, args in pairs
    ]
