"""The official OpenAI SDK's Responses API (`client.responses.create`, plain and streaming) through the gateway,
passed through to a backend that speaks it, or (third argument `translated`) translated to a chat completions
backend by a client with `responses: translate` (driven by tests/responses.rs and tests/responses_translate.rs)."""

import sys

from openai import OpenAI

base_url, model = sys.argv[1], sys.argv[2]
translated = len(sys.argv) > 3 and sys.argv[3] == "translated"
client = OpenAI(base_url=base_url, api_key="sk-sdk-caller", max_retries=0, timeout=30)

answer = client.responses.create(model=model, input="Say hi")
assert answer.output_text == "Hi there", answer
assert answer.usage.input_tokens == 5 and answer.usage.output_tokens == 3, answer.usage
if translated:
    assert answer.status == "completed", answer
    assert answer.usage.input_tokens_details.cached_tokens == 2, answer.usage

kinds = []
text = ""
final = None
for event in client.responses.create(model=model, input="Say hi", stream=True):
    kinds.append(event.type)
    if event.type == "response.output_text.delta":
        text += event.delta
    if event.type == "response.completed":
        final = event.response
assert kinds[0] == "response.created", kinds
assert kinds[-1] == "response.completed", kinds
assert text == "Hi there", text
if translated:
    for kind in ["response.in_progress", "response.output_item.added", "response.output_text.done",
                 "response.output_item.done"]:
        assert kind in kinds, (kind, kinds)
    assert final.output_text == "Hi there", final
    assert final.usage.input_tokens == 5 and final.usage.output_tokens == 3, final.usage
print("ok")
