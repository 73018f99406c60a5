"""The official OpenAI SDK's Responses API (`client.responses.create`, plain and streaming) through the gateway,
passed through to a backend that speaks it (driven by tests/responses.rs)."""

import sys

from openai import OpenAI

base_url, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base_url, api_key="sk-sdk-caller", max_retries=0, timeout=30)

answer = client.responses.create(model=model, input="Say hi")
assert answer.output_text == "Hi there", answer
assert answer.usage.input_tokens == 5 and answer.usage.output_tokens == 3, answer.usage

kinds = []
text = ""
for event in client.responses.create(model=model, input="Say hi", stream=True):
    kinds.append(event.type)
    if event.type == "response.output_text.delta":
        text += event.delta
assert kinds[0] == "response.created", kinds
assert kinds[-1] == "response.completed", kinds
assert text == "Hi there", text
print("ok")
