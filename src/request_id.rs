//! The gateway's id of each request: a UUIDv7 (time-ordered), sent as `x-request-id` and recorded.

/// The answer header carrying the id. A backend's own id is passed on as [`UPSTREAM_HEADER`].
pub const HEADER: &str = "x-request-id";
pub const UPSTREAM_HEADER: &str = "x-upstream-request-id";

/// A new id, as lower-case hyphenated text (36 bytes).
pub fn new() -> String {
    // Encoded into a buffer on the stack, not through `Display` and the formatter.
    let mut buf = uuid::Uuid::encode_buffer();
    uuid::Uuid::now_v7()
        .hyphenated()
        .encode_lower(&mut buf)
        .to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_uuid_v7_and_sort_by_time() {
        let a = super::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::new();
        assert_eq!(a.len(), 36);
        let parsed = uuid::Uuid::parse_str(&a).expect("uuid");
        assert_eq!(parsed.get_version_num(), 7);
        assert!(a < b, "{a} then {b}");
    }
}
