//! The official OpenAI Python SDK (pinned, in a virtualenv under target/) against the gateway: chat, streaming chat, models, 404.

use crate::common;
use crate::common::{client, config, Gateway, Mock};

#[tokio::test(flavor = "multi_thread")]
async fn openai_python_sdk_works_against_gateway() {
    let mock = Mock::start("sdk").await;
    mock.set_sse(5, std::time::Duration::ZERO);
    let gw = Gateway::start(&config(vec![client(
        "a",
        &mock.base_url("/v1"),
        "exact",
        &["sdk-model"],
    )]))
    .await;

    let base_url = gw.url("/v1");
    let expected = Mock::sse_text(5);
    common::run_python_client(
        "test_sdk.py",
        vec![base_url.into(), "sdk-model".into(), expected.into()],
    )
    .await;
    let requests = mock.requests();
    let chats: Vec<_> = requests.iter().filter(|r| r.method == "POST").collect();
    assert_eq!(
        chats.len(),
        2,
        "one plain and one streaming chat completion"
    );
    for r in &chats {
        assert_eq!(r.uri, "/v1/chat/completions");
    }
    // models.list() makes the gateway ask the backend for its list, with the caller's key (no api_key).
    for r in &requests {
        assert!(
            r.method == "POST" || r.uri == "/v1/models",
            "{} {}",
            r.method,
            r.uri
        );
        assert_eq!(r.header("authorization"), Some("Bearer sk-sdk-caller"));
    }
}
