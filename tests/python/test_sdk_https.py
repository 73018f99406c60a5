"""Drives gpt-api's HTTPS listener with the official OpenAI Python SDK; run by tests/tls_edge.rs.

Usage: python3 test_sdk_https.py BASE_URL CA_FILE MODEL EXPECTED_STREAM_TEXT
The SDK trusts only CA_FILE (the gateway's self-signed certificate). Exits non-zero on any mismatch.
"""

import ssl
import sys

from openai import DefaultHttpxClient, OpenAI


def main() -> None:
    base_url, ca_file, model, expected_stream = sys.argv[1:5]
    assert base_url.startswith("https://"), base_url
    verify = ssl.create_default_context(cafile=ca_file)
    client = OpenAI(
        base_url=base_url,
        api_key="sk-sdk-caller",
        max_retries=0,
        timeout=30,
        http_client=DefaultHttpxClient(verify=verify, trust_env=False),
    )

    resp = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}])
    assert resp.choices[0].message.content == "hi", resp
    assert resp.model == model, resp
    assert resp.usage is not None and resp.usage.total_tokens == 4, resp

    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "count"}], stream=True
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == expected_stream, repr(text)
    assert chunks[-1].choices[0].finish_reason == "stop", chunks[-1]

    print("sdk https ok")


if __name__ == "__main__":
    main()
