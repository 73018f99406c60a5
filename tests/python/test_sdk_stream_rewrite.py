"""Streams through a gateway client that has a special_prefix, with the official OpenAI Python SDK.

Run by tests/rewriting.rs. Usage: python3 test_sdk_stream_rewrite.py BASE_URL MODEL EXPECTED_TEXT
The caller does not ask for usage, so no chunk may be usage-only: code that reads `chunk.choices[0]` on every
chunk (as many callers do) must work, and the text must be the backend's with the prefix in front.
Exits non-zero (assertion traceback) otherwise.
"""

import sys

from openai import OpenAI


def main() -> None:
    base_url, model, expected = sys.argv[1], sys.argv[2], sys.argv[3]
    client = OpenAI(base_url=base_url, api_key="sk-sdk-caller", max_retries=0, timeout=30)

    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "count"}], stream=True
    )
    text = ""
    chunks = 0
    for chunk in stream:
        chunks += 1
        assert chunk.usage is None, f"usage chunk reached a caller that did not ask: {chunk}"
        text += chunk.choices[0].delta.content or ""
    assert chunks > 0, "no chunk"
    assert text == expected, (text, expected)
    print("sdk stream ok")


if __name__ == "__main__":
    main()
