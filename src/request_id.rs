//! The gateway's id of each request: a UUIDv7 (time-ordered), sent as `x-request-id` and recorded.

/// The answer header carrying the id. A backend's own id is passed on as [`UPSTREAM_HEADER`].
pub const HEADER: &str = "x-request-id";
pub const UPSTREAM_HEADER: &str = "x-upstream-request-id";

thread_local! {
    /// Each thread's own v7 context (the millisecond and a counter): `Uuid::now_v7` shares one behind a global
    /// mutex, which every request of every worker thread would take. Ids stay time-ordered to the millisecond
    /// across threads and strictly increasing on each thread; 74 bits of each are random or counter.
    static CONTEXT: uuid::ContextV7 = const { uuid::ContextV7::new() };
}

/// A new id, as lower-case hyphenated text (36 bytes).
pub fn new() -> String {
    let id = CONTEXT.with(|context| uuid::Uuid::new_v7(uuid::Timestamp::now(context)));
    // Encoded into a buffer on the stack, not through `Display` and the formatter.
    let mut buf = uuid::Uuid::encode_buffer();
    id.hyphenated().encode_lower(&mut buf).to_owned()
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

    #[test]
    fn ids_of_one_thread_increase_within_a_millisecond_and_differ_across_threads() {
        let ids: Vec<String> = (0..1000).map(|_| super::new()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        let other = std::thread::spawn(|| (0..1000).map(|_| super::new()).collect::<Vec<_>>())
            .join()
            .unwrap();
        let mut all: Vec<&String> = ids.iter().chain(&other).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 2000);
    }
}
