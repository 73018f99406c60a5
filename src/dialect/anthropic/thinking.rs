//! Thinking blocks Anthropic refuses, taken out of a Messages request before it goes to an anthropic backend.
//!
//! Anthropic checks the `signature` of each `thinking` block sent back (and the `data` of a
//! `redacted_thinking` one). A conversation an openai backend served before carries thinking blocks the
//! gateway translated from reasoning content, with an empty signature: sent back as they are, Anthropic
//! answers 400. Such blocks are dropped; a turn left with no content goes too (Anthropic joins the turns that
//! then follow each other).

use std::borrow::Cow;

use memchr::memmem;
use serde::Deserialize;
use serde_json::Value;

use crate::dialect::json::TextOr;

/// The body without the thinking blocks Anthropic would refuse; None when it has none (or is not a JSON
/// object with `messages`): the body is then sent as received.
///
/// Claude Code's requests name `thinking` (its top-level setting, its own signed blocks): they are scanned
/// through borrowed views that build nothing, and only a body with a block to drop is rebuilt.
pub fn strip_unsigned_thinking(body: &[u8]) -> Option<Vec<u8>> {
    // Both block types end in `thinking"`: a body without it is never parsed.
    memmem::find(body, b"thinking\"")?;
    let scan: Scan<'_> = serde_json::from_slice(body).ok()?;
    let blocks = scan.messages?.into_iter().filter_map(|t| match t.content {
        Some(TextOr::List(blocks)) => Some(blocks),
        _ => None,
    });
    if !blocks.flatten().any(|b| b.refused()) {
        return None;
    }
    let mut req: Value = serde_json::from_slice(body).ok()?;
    let turns = req.get_mut("messages")?.as_array_mut()?;
    let mut changed = false;
    turns.retain_mut(|turn| {
        let Some(blocks) = turn.get_mut("content").and_then(Value::as_array_mut) else {
            return true;
        };
        let before = blocks.len();
        blocks.retain(|b| !refused(b));
        changed |= blocks.len() != before;
        before == blocks.len() || !blocks.is_empty()
    });
    // preserve_order: the other fields keep their order.
    changed.then(|| serde_json::to_vec(&req).ok()).flatten()
}

/// What the scan reads of a request: each turn's blocks' type, signature and data.
#[derive(Deserialize)]
struct Scan<'a> {
    #[serde(borrow)]
    messages: Option<Vec<ScanTurn<'a>>>,
}

#[derive(Deserialize)]
struct ScanTurn<'a> {
    #[serde(borrow)]
    content: Option<TextOr<'a, ScanBlock<'a>>>,
}

#[derive(Deserialize)]
struct ScanBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    signature: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<Cow<'a, str>>,
}

impl ScanBlock<'_> {
    fn refused(&self) -> bool {
        let signed = |s: &Option<Cow<'_, str>>| s.as_deref().is_some_and(|s| !s.is_empty());
        match self.kind.as_deref() {
            Some("thinking") => !signed(&self.signature),
            Some("redacted_thinking") => !signed(&self.data),
            _ => false,
        }
    }
}

/// A `thinking` block without a signature or a `redacted_thinking` one without data.
fn refused(block: &Value) -> bool {
    let signed = |field: &str| {
        block
            .get(field)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    match block.get("type").and_then(Value::as_str) {
        Some("thinking") => !signed("signature"),
        Some("redacted_thinking") => !signed("data"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn strip(v: Value) -> Option<Value> {
        let out = strip_unsigned_thinking(v.to_string().as_bytes())?;
        Some(serde_json::from_slice(&out).unwrap())
    }

    #[test]
    fn unsigned_blocks_go_signed_ones_stay() {
        let req = json!({"model": "m", "max_tokens": 9, "thinking": {"type": "enabled", "budget_tokens": 2048},
            "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "from an openai backend", "signature": ""},
                {"type": "thinking", "thinking": "no signature at all"},
                {"type": "redacted_thinking"},
                {"type": "thinking", "thinking": "Anthropic's own", "signature": "EqQB"},
                {"type": "redacted_thinking", "data": "EmwK"},
                {"type": "text", "text": "Hello"}]},
            {"role": "user", "content": "More"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "only this", "signature": ""}]},
            {"role": "user", "content": "And?"}]});
        let out = strip(req).unwrap();
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "Anthropic's own", "signature": "EqQB"},
                    {"type": "redacted_thinking", "data": "EmwK"},
                    {"type": "text", "text": "Hello"}]},
                {"role": "user", "content": "More"},
                {"role": "user", "content": "And?"}])
        );
        assert_eq!(out["thinking"]["budget_tokens"], 2048, "the rest unchanged");
        let text = String::from_utf8(strip_unsigned_thinking(
            br#"{"model":"m","messages":[{"role":"assistant","content":[{"type":"thinking","thinking":"x"},{"type":"text","text":"y"}]}],"max_tokens":1}"#,
        ).unwrap()).unwrap();
        assert_eq!(
            text,
            r#"{"model":"m","messages":[{"role":"assistant","content":[{"type":"text","text":"y"}]}],"max_tokens":1}"#,
            "fields keep their order"
        );
    }

    #[test]
    fn bodies_without_such_blocks_pass_as_received() {
        for body in [
            json!({"model": "m", "messages": [{"role": "user", "content": "thinking\""}]}),
            json!({"model": "m", "thinking": {"type": "enabled", "budget_tokens": 1024},
                "messages": [{"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "t", "signature": "s"}]}]}),
            json!({"messages": "thinking\""}),
        ] {
            assert_eq!(strip(body.clone()), None, "{body}");
        }
        assert_eq!(strip_unsigned_thinking(b"not json \"thinking\""), None);
    }
}
