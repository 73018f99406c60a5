"""Drives a running gpt-api with the official Anthropic Python SDK (Messages API); run by tests/messages.rs.

Usage: python3 test_anthropic_sdk.py BASE_URL API_KEY MODEL [count N]
Without `count`, the backend behind the gateway is a mock OpenAI server answering with a text and a `get_weather`
tool call (JSON and streamed), and `count_tokens` is answered by the gateway itself. With `count N`, the model is
served by a mock Anthropic backend whose `count_tokens` answers N, and only `count_tokens` is called.
Exits non-zero (assertion traceback) when the SDK cannot use the gateway as it uses Anthropic.
"""

import sys

import anthropic

TOOLS = [
    {
        "name": "get_weather",
        "description": "The weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]

MESSAGES = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
    },
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
]


def count(client: anthropic.Anthropic, model: str, messages: list) -> int:
    """`client.messages.count_tokens` with the tools and a system prompt; its `input_tokens`, checked an int."""
    n = client.messages.count_tokens(model=model, messages=messages, tools=TOOLS, system="Be brief.").input_tokens
    assert isinstance(n, int), n
    return n


def main() -> None:
    base_url, api_key, model = sys.argv[1], sys.argv[2], sys.argv[3]
    client = anthropic.Anthropic(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)
    if sys.argv[4:5] == ["count"]:
        assert count(client, model, MESSAGES) == int(sys.argv[5])
        print("anthropic sdk count_tokens ok")
        return

    msg = client.messages.create(
        model=model, max_tokens=256, system="Be brief.", messages=MESSAGES, tools=TOOLS
    )
    assert msg.type == "message" and msg.role == "assistant", msg
    assert [b.type for b in msg.content] == ["text", "tool_use"], msg
    assert msg.content[0].text == "Let me check.", msg
    assert msg.content[1].name == "get_weather" and msg.content[1].input == {"city": "Paris"}, msg
    assert msg.stop_reason == "tool_use", msg
    assert msg.usage.input_tokens == 11 and msg.usage.output_tokens == 6, msg.usage

    kinds = []
    with client.messages.stream(model=model, max_tokens=256, messages=MESSAGES, tools=TOOLS) as stream:
        for event in stream:
            kinds.append(event.type)
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and "message_stop" in kinds, kinds
    tool = [b for b in final.content if b.type == "tool_use"]
    assert len(tool) == 1 and tool[0].name == "get_weather", final
    assert tool[0].input == {"city": "Paris"}, final
    assert final.stop_reason == "tool_use", final
    assert final.usage.output_tokens == 5, final.usage

    short = count(client, model, MESSAGES)
    assert short > 0, short
    longer = [{"role": "user", "content": "Weather in Paris, and in Lyon, tomorrow? " * 20}] + MESSAGES[1:]
    assert count(client, model, longer) > short + 100, (short, count(client, model, longer))

    try:
        client.messages.create(model="no-such-model", max_tokens=5, messages=MESSAGES)
    except anthropic.NotFoundError as e:
        assert e.body["error"]["type"] == "not_found_error", e.body
    else:
        raise AssertionError("unknown model did not raise NotFoundError")

    bad = anthropic.Anthropic(base_url=base_url, api_key="sk-wrong", max_retries=0, timeout=30)
    try:
        bad.messages.create(model=model, max_tokens=5, messages=MESSAGES)
    except anthropic.AuthenticationError as e:
        assert e.body["error"]["type"] == "authentication_error", e.body
    else:
        raise AssertionError("a wrong key did not raise AuthenticationError")

    print("anthropic sdk ok")


if __name__ == "__main__":
    main()
