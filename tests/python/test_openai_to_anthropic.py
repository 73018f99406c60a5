"""Drives a running gpt-api with the official OpenAI Python SDK (chat completions) whose model is served by an
Anthropic backend; run by tests/sdk.rs.

Usage: python3 test_openai_to_anthropic.py BASE_URL MODEL text|tool
`text`: the mock Anthropic backend answers "Hi there" as JSON and streams "Hello!" with usage (38 in, 15 out);
a plain and a streaming (`include_usage`) call. `tool`: it answers a text and a `get_weather` tool_use block; a
call with a `tools` list. Exits non-zero (assertion traceback) when the SDK cannot use the answers.
"""

import json
import sys

import openai

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def text(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=64)
    assert r.object == "chat.completion", r
    assert r.choices[0].message.role == "assistant", r
    assert r.choices[0].message.content == "Hi there", r
    assert r.choices[0].finish_reason == "stop", r
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (16, 6), r.usage

    chunks = list(
        client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=64, stream=True, stream_options={"include_usage": True}
        )
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "Hello!", chunks
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"], chunks
    usage = [c.usage for c in chunks if c.usage]
    assert len(usage) == 1 and not chunks[-1].choices, chunks
    assert (usage[0].prompt_tokens, usage[0].completion_tokens) == (38, 15), usage


def tool(client: openai.OpenAI, model: str) -> None:
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    r = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, max_tokens=64)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", r
    assert choice.message.content == "Let me check.", r
    calls = choice.message.tool_calls
    assert len(calls) == 1 and calls[0].type == "function", r
    assert calls[0].id == "toolu_01", r
    assert calls[0].function.name == "get_weather", r
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}, r


def main() -> None:
    base_url, model, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    client = openai.OpenAI(base_url=base_url, api_key="sk-openai-sdk-caller", max_retries=0, timeout=30)
    {"text": text, "tool": tool}[mode](client, model)
    print(f"openai sdk to anthropic ({mode}) ok")


if __name__ == "__main__":
    main()
