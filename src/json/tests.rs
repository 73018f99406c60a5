//! The skim against serde_json: the same texts accepted, the same strings read.

use super::*;
use proptest::prelude::*;
use serde::de::IgnoredAny;

/// Whether the skim reads `text` as one value and nothing after it.
fn skims(text: &str) -> bool {
    let mut cursor = Cursor::new(text);
    cursor.raw().is_some() && cursor.end().is_some()
}

fn serde_accepts(text: &str) -> bool {
    serde_json::from_str::<IgnoredAny>(text).is_ok()
}

#[test]
fn accepts_what_serde_accepts() {
    let valid = [
        r#"{"a":1,"b":"x\"}","c":{"d":[1,{"e":"]"}]},"f":null , "g" : -2.5e3 ,"h":[]}"#,
        " {\t\r\n} ",
        r#"[true,false,null,0,-0,1.25,1e5,1E+5,1e-5,"\u00e9\ud83d\ude00\ud800","\/\b\f\n\r\t"]"#,
        r#"{"esc\"aped key":1,"k\u0041":2}"#,
        r#""é日本""#,
        "[]",
        "0",
    ];
    for text in valid {
        assert!(serde_accepts(text), "{text}");
        assert!(skims(text), "{text}");
    }
    let invalid = [
        "",
        " ",
        "{",
        "{\"a\"}",
        "{\"a\":}",
        "{\"a\":1,}",
        "[1,]",
        "[1 2]",
        "{\"a\":1 \"b\":2}",
        "{1:2}",
        "[1}",
        "{\"a\":[}]}",
        "01",
        "-",
        "1.",
        ".5",
        "1e",
        "1e+",
        "+1",
        "tru",
        "nulll",
        "NaN",
        "\"a\u{1}b\"",
        "\"tab\there\"",
        "\"\\x\"",
        "\"\\u12\"",
        "\"\\u12g4\"",
        "\"open",
        "{\"a\":1}x",
        "{\"a\":1}{}",
        "\u{feff}{}",
        "{\"a\":1}\u{c}",
    ];
    for text in invalid {
        assert!(!serde_accepts(text), "{text:?}");
        assert!(!skims(text), "{text:?}");
    }
}

#[test]
fn deep_nesting_is_left_to_serde() {
    let deep = format!("{}{}", "[".repeat(70), "]".repeat(70));
    assert!(serde_accepts(&deep));
    assert!(!skims(&deep));
    let shallow = format!("{}{}", "[".repeat(60), "]".repeat(60));
    assert!(skims(&shallow));
}

#[test]
fn object_gives_plain_keys_and_raw_values() {
    let text = r#" { "a" : [1, {"b":"}"}] , "c":"x\ny", "d": null } "#;
    let mut got = Vec::new();
    let mut cursor = Cursor::new(text);
    cursor
        .object(|c, key| {
            got.push((key, c.nullable()?));
            Some(())
        })
        .unwrap();
    assert!(cursor.end().is_some());
    let want: Vec<(&[u8], _)> = vec![
        (b"a", Some(r#"[1, {"b":"}"}]"#)),
        (b"c", Some(r#""x\ny""#)),
        (b"d", None),
    ];
    assert_eq!(got, want);
    // serde_json matches a key unescaped: an escaped key is left to it.
    let mut cursor = Cursor::new(r#"{"mod\u0065l":"m"}"#);
    assert!(cursor.object(|c, _| c.raw().map(drop)).is_none());
}

#[test]
fn unescapes_like_serde() {
    let strings = [
        r#"plain"#,
        r#"q\"uote \\ back \/ slash"#,
        r#"\b\f\n\r\t"#,
        r#"caf\u00e9 \u65e5\u672c"#,
        r#"\ud83d\ude00 pair, \uD83D\uDE00 upper"#,
        r#"\u0000 nul"#,
        r#"日本 \n 語"#,
        r#"\uffff"#,
    ];
    for inner in strings {
        let serde: String = serde_json::from_str(&format!("\"{inner}\"")).unwrap();
        assert_eq!(unescape(inner).as_deref(), Some(serde.as_str()), "{inner}");
    }
    // Unsure (serde_json refuses these, or reads them its own way): None.
    let odd = [
        r#"\ud83d"#,
        r#"\ud83d alone"#,
        r#"\ud83d\n"#,
        r#"\ud83d\u0041"#,
        r#"\ude00"#,
        r#"\x"#,
        r#"\u12"#,
        r#"tail\"#,
        "ctl\u{1}",
        r#"bare"quote"#,
    ];
    for inner in odd {
        assert_eq!(unescape(inner), None, "{inner}");
    }
}

/// JSON-ish text: tokens of every kind, valid or not, nested.
fn jsonish() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("fals".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
        proptest::sample::select(vec!["01", "-", "1.", "1e5", "-0.5E-3", "2e+", ".1"])
            .prop_map(String::from),
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
        "\"[a-z\\\\\"\\u{1}\\t]{0,6}(\\\\u[0-9a-fA-FxX]{0,4})?\"",
        Just(" ".to_owned()),
        Just(",".to_owned()),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5)
                .prop_map(|v| format!("[{}]", v.join(","))),
            proptest::collection::vec((inner.clone(), inner.clone()), 0..4).prop_map(|m| {
                let members: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", members.join(","))
            }),
            proptest::collection::vec(inner, 0..4).prop_map(|v| v.concat()),
        ]
    })
}

proptest! {
    #![proptest_config(crate::fuzz_config())]

    #[test]
    fn the_eight_byte_search_finds_the_first_special_byte(
        bytes in proptest::collection::vec(
            prop_oneof![4 => 0x20u8..0x7f, 1 => Just(b'"'), 1 => Just(b'\\'), 1 => 0u8..0x20, 1 => 0x7fu8..=0xff],
            0..40,
        ),
        from in 0usize..40,
    ) {
        let from = from.min(bytes.len());
        let naive = bytes[from..]
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
            .map_or(bytes.len(), |n| from + n);
        prop_assert_eq!(plain_run(&bytes, from), naive);
    }

    #[test]
    fn skims_exactly_what_serde_accepts(text in jsonish()) {
        prop_assert_eq!(skims(&text), serde_accepts(&text), "{}", text);
    }

    #[test]
    fn the_strict_skim_only_leaves_out_unicode_escapes(text in jsonish()) {
        let mut strict = Cursor::strict(&text);
        let strict = strict.raw().is_some() && strict.end().is_some();
        prop_assert!(!strict || skims(&text), "{}", text);
        prop_assert!(strict || !skims(&text) || text.contains("\\u"), "{}", text);
    }

    #[test]
    fn unescape_reads_any_string_serde_wrote(s in any::<String>()) {
        let quoted = serde_json::to_string(&s).unwrap();
        prop_assert_eq!(unescape(&quoted[1..quoted.len() - 1]), Some(s));
    }

    #[test]
    fn unescape_never_disagrees_with_serde(inner in "([a-z\"]|\\\\[\"\\\\/bfnrtux]|\\\\u[dD][89abAB][0-9a-f]{2}|\\\\u[dD][c-fC-F][0-9a-f]{2}|\\\\u00[0-9a-f]{2})*") {
        if let Some(text) = unescape(&inner) {
            let serde: Result<String, _> = serde_json::from_str(&format!("\"{inner}\""));
            prop_assert_eq!(Some(text), serde.ok(), "{}", inner);
        }
    }
}
