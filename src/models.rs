//! The `/v1/models` answer: exact-rule models and each backend's own list, filtered by routing, in OpenAI's shape.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::config::{Client, MatchKind};

/// One backend's `GET /models` answer, or why there is none.
pub type Fetched = Result<Vec<Map<String, Value>>, String>;

#[derive(Deserialize)]
struct ListBody {
    data: Vec<Value>,
}

/// Reads an OpenAI list (`{"object":"list","data":[...]}`): entries that are objects with a string `id`.
pub fn parse_list(body: &[u8]) -> Result<Vec<Map<String, Value>>, String> {
    let list: ListBody =
        serde_json::from_slice(body).map_err(|e| format!("not a model list: {e}"))?;
    Ok(list
        .data
        .into_iter()
        .filter_map(|v| match v {
            Value::Object(m) if m.get("id").is_some_and(Value::is_string) => Some(m),
            _ => None,
        })
        .collect())
}

/// The merged list: for each client by priority, the backend's own entries that the client would route,
/// then its `exact` models not listed yet. The first entry of an id wins.
/// `fetched[i]` belongs to `clients[i]` (clients sorted by priority); `None` means not asked.
pub fn merge(clients: &[Arc<Client>], fetched: &[Option<Fetched>], created: i64) -> Vec<u8> {
    let mut seen = HashSet::new();
    let mut data = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        if let Some(Some(Ok(list))) = fetched.get(i) {
            for entry in list {
                let Some(id) = entry.get("id").and_then(Value::as_str) else {
                    continue;
                };
                if client.model_match.matches(id) && seen.insert(id.to_owned()) {
                    data.push(Value::Object(entry.clone()));
                }
            }
        }
        if client.model_match.kind == MatchKind::Exact {
            for id in &client.model_match.values {
                if seen.insert(id.clone()) {
                    data.push(json!({"id": id, "object": "model", "created": created, "owned_by": client.name}));
                }
            }
        }
    }
    json!({"object": "list", "data": data})
        .to_string()
        .into_bytes()
}

/// The same list with only the entries whose id `keep` accepts (a caller's key may use a subset).
pub fn retain(body: &[u8], keep: impl Fn(&str) -> bool) -> Vec<u8> {
    let Ok(mut list) = serde_json::from_slice::<Value>(body) else {
        return body.to_vec();
    };
    if let Some(data) = list.get_mut("data").and_then(Value::as_array_mut) {
        data.retain(|m| m.get("id").and_then(Value::as_str).is_some_and(&keep));
    }
    list.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::routing::Router;

    fn clients() -> Vec<Arc<Client>> {
        let cfg = Config::parse(
            "openai_clients:
  - {name: a, base_url: 'http://h', priority: 2, model_match: {type: exact, value: [m1, m2]}}
  - {name: b, base_url: 'http://h', priority: 1, model_match: {type: exact, value: [m2]}}
  - {name: k, base_url: 'http://h', priority: 3, model_match: {type: keyword, value: gpt}}",
            &|_| None,
        )
        .unwrap();
        Router::new(&cfg, None).clients().to_vec()
    }

    fn ids(body: &[u8]) -> Vec<(String, String)> {
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["object"], "list");
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["id"].as_str().unwrap().to_owned(),
                    m["owned_by"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn exact_models_once_by_priority() {
        let body = merge(&clients(), &[None, None, None], 7);
        let pairs = ids(&body);
        assert_eq!(
            pairs,
            [("m2".into(), "b".into()), ("m1".into(), "a".into())]
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["data"][0]["created"], 7);
        assert_eq!(v["data"][0]["object"], "model");
    }

    #[test]
    fn backend_lists_are_filtered_and_merged() {
        let list = |ids: &[&str], owner: &str| -> Option<Fetched> {
            let body = json!({"object": "list", "data": ids.iter().map(|id| json!({"id": id, "object": "model", "created": 1, "owned_by": owner})).collect::<Vec<_>>()});
            Some(parse_list(body.to_string().as_bytes()))
        };
        let fetched = [
            list(&["m2", "other"], "backend-b"),
            Some(Err("timed out".into())),
            list(&["gpt-4o", "m1", "llama"], "openai"),
        ];
        let pairs = ids(&merge(&clients(), &fetched, 7));
        assert_eq!(
            pairs,
            [
                ("m2".into(), "backend-b".into()),
                ("m1".into(), "a".into()),
                ("gpt-4o".into(), "openai".into()),
            ]
        );
    }

    #[test]
    fn retain_keeps_allowed_ids() {
        let body = merge(&clients(), &[None, None, None], 7);
        let kept = retain(&body, |id| id == "m1");
        assert_eq!(ids(&kept), [("m1".into(), "a".into())]);
    }

    #[test]
    fn parse_rejects_non_lists() {
        assert!(parse_list(b"[]").is_err());
        assert!(parse_list(b"<html>").is_err());
        assert_eq!(
            parse_list(br#"{"data":[{"id":"x"},{"no":"id"},3]}"#)
                .unwrap()
                .len(),
            1
        );
    }
}
