"""Drives a running gpt-api with the official OpenAI Python SDK; run by tests/sdk.rs.

Usage: python3 test_sdk.py BASE_URL MODEL EXPECTED_STREAM_TEXT
Exits non-zero (assertion traceback) when the SDK cannot talk to the gateway as it talks to OpenAI.
"""

import sys

from openai import NotFoundError, OpenAI


def main() -> None:
    base_url, model, expected_stream = sys.argv[1], sys.argv[2], sys.argv[3]
    client = OpenAI(base_url=base_url, api_key="sk-sdk-caller", max_retries=0, timeout=30)

    resp = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}])
    assert resp.choices[0].message.content == "hi", resp
    assert resp.model == model, resp
    assert resp.usage is not None and resp.usage.total_tokens == 4, resp

    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "count"}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == expected_stream, repr(text)

    ids = [m.id for m in client.models.list()]
    assert model in ids, ids

    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    except NotFoundError as e:
        assert e.code == "model_not_found", e.body
    else:
        raise AssertionError("unknown model did not raise NotFoundError")

    print("sdk ok")


if __name__ == "__main__":
    main()
