//! The `/v1/models` answer: every model named by an `exact` rule, in OpenAI's list shape.

use std::collections::HashSet;

use serde_json::json;

use crate::routing::Router;

/// `{"object":"list","data":[{"id","object":"model","created","owned_by"}]}`, de-duplicated by id.
pub fn list(router: &Router, created: i64) -> Vec<u8> {
    let mut seen = HashSet::new();
    let data: Vec<_> = router
        .exact_models()
        .filter(|(id, _)| seen.insert(*id))
        .map(|(id, owner)| json!({"id": id, "object": "model", "created": created, "owned_by": owner}))
        .collect();
    json!({"object": "list", "data": data})
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Config;

    #[test]
    fn lists_exact_models_once() {
        let cfg = Config::parse(
            "openai_clients:
  - {name: a, base_url: 'http://h', priority: 2, model_match: {type: exact, value: [m1, m2]}}
  - {name: b, base_url: 'http://h', priority: 1, model_match: {type: exact, value: [m2]}}
  - {name: k, base_url: 'http://h', model_match: {type: keyword, value: gpt}}",
            &|_| None,
        )
        .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&list(&Router::new(&cfg, None), 7)).unwrap();
        assert_eq!(v["object"], "list");
        let ids: Vec<_> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["id"].as_str().unwrap(), m["owned_by"].as_str().unwrap()))
            .collect();
        assert_eq!(ids, [("m2", "b"), ("m1", "a")]);
        assert_eq!(v["data"][0]["created"], 7);
        assert_eq!(v["data"][0]["object"], "model");
    }
}
