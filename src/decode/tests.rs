use super::*;
use proptest::prelude::*;
use serde_json::Value;

fn run(body: &str) -> Result<Decoded, DecodeError> {
    decode(
        &Bytes::copy_from_slice(body.as_bytes()),
        &DecodeOptions::default(),
    )
}

fn lines(body: &str) -> Vec<String> {
    run(body)
        .unwrap()
        .events
        .iter()
        .map(|e| String::from_utf8(e.raw.to_vec()).unwrap())
        .collect()
}

#[test]
fn compact_items_are_slices_of_the_body() {
    let body = Bytes::from_static(br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":[{"a":1},{"b":[2,3]}]}"#);
    let d = decode(&body, &DecodeOptions::default()).unwrap();
    assert_eq!(d.events.len(), 2);
    let range = body.as_ptr_range();
    for e in &d.events {
        assert!(range.contains(&e.raw.as_ptr()), "event was copied");
    }
    assert_eq!(&d.events[1].raw[..], br#"{"b":[2,3]}"#);
}

#[test]
fn pretty_items_lose_only_whitespace_between_tokens() {
    let body = "\u{feff}{\n  \"items\" : [\n    { \"k\" : \"a b\\n\\u0026\" ,\n \"n\": 1.50E+3 },\t{ }\r\n ]\n}\n";
    assert_eq!(lines(body), [r#"{"k":"a b\n\u0026","n":1.50E+3}"#, "{}"]);
}

#[test]
fn one_whitespace_byte_before_any_token_is_found_and_left_out() {
    // A compact EventList of 51 tokens and the offsets where a token starts
    // after the first: a whitespace byte is put before each in turn, so it
    // falls in every lane of the token pass's groups of eight.
    let compact = r#"{"items":[{"a":"x y","b":[1,true,null],"c":{"d":"e"}},{"f":-2.5e3,"g":"\"","h":[]},{"i":{}}]}"#;
    let want = lines(compact);
    let value: Value = serde_json::from_str(compact).unwrap();
    // Between two tokens a space leaves the value as it is; inside a string
    // it changes it, inside a number or literal it breaks it.
    let starts: Vec<usize> = (1..compact.len())
        .filter(|&i| {
            let spaced = compact[..i].to_string() + " " + &compact[i..];
            serde_json::from_str::<Value>(&spaced).ok().as_ref() == Some(&value)
        })
        .collect();
    assert_eq!(starts.len(), 50);
    for i in starts {
        for ws in [" ", "\t", "\n", "\r"] {
            let body = compact[..i].to_string() + ws + &compact[i..];
            assert_eq!(lines(&body), want, "whitespace at {i}: {body}");
        }
    }
}

#[test]
fn json_lines_with_crlf_and_a_blank_line() {
    let body = "{\"auditID\":\"1\"}\n{\"auditID\":\"2\"}\r\n{\"auditID\":\"3\"}\n\n";
    assert_eq!(
        lines(body),
        [
            r#"{"auditID":"1"}"#,
            r#"{"auditID":"2"}"#,
            r#"{"auditID":"3"}"#
        ]
    );
}

#[test]
fn json_lines_may_hold_event_lists_and_numbers_out_of_f64_range() {
    let body =
        "{\"items\":[{\"n\":1e400}]}\n{\"auditID\":\"x\",\"n\":123456789012345678901234567890}";
    assert_eq!(
        lines(body),
        [
            r#"{"n":1e400}"#,
            r#"{"auditID":"x","n":123456789012345678901234567890}"#
        ]
    );
}

#[test]
fn a_bad_line_refuses_the_whole_body() {
    let err = run("{\"auditID\":\"1\"}\n{\"auditID\":}\n").unwrap_err();
    assert!(
        matches!(err, DecodeError::Json(JsonError { offset, .. }) if offset >= 16),
        "{err:?}"
    );
}

#[test]
fn single_event_and_top_level_array() {
    assert_eq!(lines(r#"{"kind":"Event","x":1}"#).len(), 1);
    assert_eq!(
        lines(r#" {"level":"Metadata","auditID":"a"} "#),
        [r#"{"level":"Metadata","auditID":"a"}"#]
    );
    assert_eq!(lines(r#"[{"a":1},{"b":2}]"#), [r#"{"a":1}"#, r#"{"b":2}"#]);
}
#[test]
fn items_that_are_not_objects_are_dropped_and_counted_keeping_their_neighbours() {
    let d =
        run(r#"{"items":[1,{"auditID":"a"},"x",null,[{"auditID":"b"}],{"auditID":"c"}]}"#).unwrap();
    let out: Vec<&[u8]> = d.events.iter().map(|e| &e.raw[..]).collect();
    assert_eq!(out, [&br#"{"auditID":"a"}"#[..], br#"{"auditID":"c"}"#]);
    assert_eq!(d.not_objects, 4);
    let d = run("[1,2,3]").unwrap();
    assert!(d.events.is_empty());
    assert_eq!(d.not_objects, 3);
}

#[test]
fn lone_surrogate_escapes_are_accepted_and_kept_as_received() {
    let body = r#"{"items":[{"auditID":"a","s":"\ud800"},{"auditID":"b","s":"x\udc00y"},{"auditID":"c","s":"\ud83d\ude00"}]}"#;
    assert_eq!(
        lines(body),
        [
            r#"{"auditID":"a","s":"\ud800"}"#,
            r#"{"auditID":"b","s":"x\udc00y"}"#,
            r#"{"auditID":"c","s":"\ud83d\ude00"}"#
        ]
    );
}

#[test]
fn invalid_utf8_costs_only_its_own_event_which_gets_u_fffd_as_in_go() {
    let body = [
        br#"{"items":[{"auditID":"a"},{"auditID":"b","s":"x"#.as_slice(),
        b"\xff\xe2\x82",
        br#"y"},{"auditID":"c"}]}"#,
    ]
    .concat();
    let opts = DecodeOptions::default();
    assert_eq!(
        decode(&Bytes::from(body.clone()), &opts)
            .unwrap_err()
            .reason(),
        "invalid_utf8"
    );
    let (fixed, d) = decode_owned(Bytes::from(body), &opts);
    let d = d.unwrap();
    let out: Vec<String> = d
        .events
        .iter()
        .map(|e| String::from_utf8(e.raw.to_vec()).unwrap())
        .collect();
    assert_eq!(
        out,
        [
            r#"{"auditID":"a"}"#,
            "{\"auditID\":\"b\",\"s\":\"x\u{FFFD}\u{FFFD}\u{FFFD}y\"}",
            r#"{"auditID":"c"}"#
        ]
    );
    assert_eq!(d.repaired, 1);
    assert!(std::str::from_utf8(&fixed).is_ok());
    assert_eq!(d.events[2].meta.audit_id.unwrap().get(&fixed), b"c");
    // Outside a string it is still not JSON.
    let (_, r) = decode_owned(Bytes::from_static(b"[{\"a\":1}\xff]"), &opts);
    assert_eq!(r.unwrap_err().reason(), "invalid_json");
}

#[test]
fn empty_and_missing_items() {
    assert!(lines(r#"{"kind":"EventList","items":[]}"#).is_empty());
    assert!(
        lines(r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{}}"#).is_empty()
    );
    assert!(lines(r#"{"kind":"EventList","items":null}"#).is_empty());
}

#[test]
fn refusals_name_their_reason() {
    assert_eq!(run("  \n").unwrap_err().reason(), "empty_body");
    assert_eq!(run("not json").unwrap_err().reason(), "invalid_json");
    assert_eq!(
        run(r#"{"items":{}}"#).unwrap_err().reason(),
        "not_an_event_list"
    );
    assert_eq!(
        run(r#"{"records":[]}"#).unwrap_err().reason(),
        "not_an_event_list"
    );
    assert_eq!(run("42").unwrap_err().reason(), "not_an_event_list");
    assert_eq!(
        run("{\"a\":\"\u{1}\"}").unwrap_err().reason(),
        "invalid_json"
    );
    let opts = DecodeOptions {
        max_events: 2,
        ..DecodeOptions::default()
    };
    let err = decode(&Bytes::from_static(b"[{},{},1,{}]"), &opts).unwrap_err();
    assert_eq!(err, DecodeError::TooManyEvents { count: 3, max: 2 });
    assert!(decode(&Bytes::from_static(b"[{},1,2,{}]"), &opts).is_ok());
}

#[test]
fn routing_fields_are_read_without_copying() {
    let body = Bytes::from_static(
        br#"{"items":[{"level":"RequestResponse","auditID":"id-1","stage":"ResponseComplete","verb":"get","user":{"groups":["g"],"username":"alice"},"objectRef":{"resource":"pods","namespace":"demo"},"responseStatus":{"metadata":{},"code":403}}]}"#,
    );
    let d = decode(&body, &DecodeOptions::default()).unwrap();
    let m = d.events[0].meta;
    assert_eq!(m.level, Some(Level::RequestResponse));
    assert_eq!(m.stage, Some(Stage::ResponseComplete));
    assert_eq!(m.code, Some(403));
    let get = |s: Option<Span>| String::from_utf8(s.unwrap().get(&body).to_vec()).unwrap();
    assert_eq!(
        [
            get(m.audit_id),
            get(m.verb),
            get(m.username),
            get(m.namespace),
            get(m.resource)
        ],
        ["id-1", "get", "alice", "demo", "pods"]
    );
}

#[test]
fn oversized_event_is_truncated_like_the_api_server_does() {
    let big = "x".repeat(500);
    let body = format!(
        r#"{{"items":[{{"auditID":"1","requestObject":{{"d":"{big}"}},"annotations":{{"a":"b"}},"responseObject":[1]}},{{"auditID":"2","requestObject":"{big}"}},{{"auditID":"3"}}]}}"#
    );
    let opts = DecodeOptions {
        max_events: 10,
        max_event_bytes: 100,
    };
    let d = decode(&Bytes::from(body), &opts).unwrap();
    let got: Vec<_> = d
        .events
        .iter()
        .map(|e| String::from_utf8(e.raw.to_vec()).unwrap())
        .collect();
    assert_eq!(
        got,
        [
            r#"{"auditID":"1","annotations":{"audit.k8s.io/truncated":"true","a":"b"}}"#,
            r#"{"auditID":"2","annotations":{"audit.k8s.io/truncated":"true"}}"#,
            r#"{"auditID":"3"}"#,
        ]
    );
    assert_eq!(d.truncated, 2);
    assert!(d.dropped.is_empty());
}

#[test]
fn event_too_large_even_truncated_is_dropped_and_reported() {
    let body = format!(
        r#"[{{"auditID":"big","user":"{}"}},{{"auditID":"ok"}}]"#,
        "u".repeat(300)
    );
    let opts = DecodeOptions {
        max_events: 10,
        max_event_bytes: 100,
    };
    let bytes = Bytes::from(body);
    let d = decode(&bytes, &opts).unwrap();
    assert_eq!(d.events.len(), 1);
    assert_eq!(d.dropped.len(), 1);
    assert_eq!(d.dropped[0].audit_id.unwrap().get(&bytes), b"big");
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
        "[\"\\\\\n\t\u{2028}<>&a-z]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec(("[a-zA-Z\"é]{0,6}", inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn any_list_of_json_values_comes_out_as_the_same_values(
        items in prop::collection::vec(json_value(), 0..12),
        pretty in any::<bool>(),
    ) {
        let list = serde_json::json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": items});
        let body = if pretty { serde_json::to_vec_pretty(&list) } else { serde_json::to_vec(&list) }.unwrap();
        let d = decode(&Bytes::from(body), &DecodeOptions::default()).unwrap();
        let objects: Vec<&Value> = items.iter().filter(|v| v.is_object()).collect();
        prop_assert_eq!(d.events.len(), objects.len());
        prop_assert_eq!(d.not_objects, items.len() - objects.len());
        for (event, item) in d.events.iter().zip(objects) {
            prop_assert!(!event.raw.contains(&b'\n'));
            let back: Value = serde_json::from_slice(&event.raw).unwrap();
            prop_assert_eq!(&back, item);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&Bytes::from(body), &DecodeOptions::default());
    }
}

#[test]
fn large_json_lines_bodies_split_like_small_ones() {
    // Over the 4 MiB at which the parser's buffers are released after use.
    let line = format!(r#"{{"auditID":"x","pad":"{}"}}"#, "p".repeat(100));
    let body = format!("{line}\n").repeat(50_000);
    assert!(body.len() > 5 << 20);
    let d = run(&body).unwrap();
    assert_eq!(d.events.len(), 50_000);
    assert_eq!(&d.events[49_999].raw[..], line.as_bytes());
}

#[test]
fn eventlist_keys_match_like_go_decoding() {
    assert_eq!(
        lines(r#"{"kind":"EventList","Items":[{"a":1}]}"#),
        [r#"{"a":1}"#]
    );
    assert_eq!(
        lines(r#"{"KIND":"EventList","\u0069tems":[{"a":2}]}"#),
        [r#"{"a":2}"#]
    );
}

#[test]
fn json_errors_point_at_the_fault() {
    let err = run("{\"items\":[{\"a\":1},\n {\"b\":tru}]}").unwrap_err();
    let DecodeError::Json(JsonError { offset, .. }) = err else {
        panic!("{err:?}")
    };
    assert!((24..=29).contains(&offset), "{offset}");
    let bad_utf8 = [b"[\"ok\",\"".as_slice(), &[0xff], b"\"]"].concat();
    let err = decode(&Bytes::from(bad_utf8), &DecodeOptions::default()).unwrap_err();
    assert!(
        matches!(err, DecodeError::InvalidUtf8 { offset: 6..=8 }),
        "{err:?}"
    );
}

/// Bytes that are JSON more often than chance.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        any::<u8>().prop_map(|b| vec![b]),
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"",
            " ",
            "\n",
            "\t",
            "1e400",
            "\"items\"",
            "\"auditID\"",
            "\"kind\"",
            "\"EventList\"",
            "null",
            "\"x\\n\"",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
    ];
    prop::collection::vec(piece, 0..48).prop_map(|p| p.concat())
}

proptest! {
    #[test]
    fn output_is_json_lines_no_larger_than_the_body(body in jsonish()) {
        let bytes = Bytes::from(body);
        if let Ok(d) = decode(&bytes, &DecodeOptions::default()) {
            let out: usize = d.events.iter().map(|e| e.raw.len()).sum();
            prop_assert!(out <= bytes.len());
            prop_assert!(d.events.len() <= bytes.len() / 2 + 1);
            for e in &d.events {
                prop_assert!(!e.raw.contains(&b'\n') && !e.raw.contains(&b'\r'));
                let text = std::str::from_utf8(&e.raw);
                prop_assert!(text.is_ok());
                prop_assert!(serde_json::from_slice::<Value>(&e.raw).is_ok());
            }
        }
    }

    #[test]
    fn json_lines_of_events_come_out_as_the_same_values(
        fields in prop::collection::vec(json_value(), 1..8),
        pretty in any::<bool>(),
        crlf in any::<bool>(),
    ) {
        let events: Vec<Value> = fields
            .into_iter()
            .enumerate()
            .map(|(i, v)| serde_json::json!({"auditID": i.to_string(), "v": v}))
            .collect();
        let sep = if crlf { "\r\n" } else { "\n" };
        let body = events
            .iter()
            .map(|e| if pretty { serde_json::to_string_pretty(e) } else { serde_json::to_string(e) }.unwrap())
            .collect::<Vec<_>>()
            .join(sep);
        let d = decode(&Bytes::from(body), &DecodeOptions::default()).unwrap();
        prop_assert_eq!(d.events.len(), events.len());
        for (event, want) in d.events.iter().zip(&events) {
            let back: Value = serde_json::from_slice(&event.raw).unwrap();
            prop_assert_eq!(&back, want);
        }
    }
}

#[test]
fn owned_bodies_are_validated_in_place_and_left_as_they_were() {
    let texts = [
        r#"{"kind":"EventList","items":[{"a":"x\"y\u00e9"},{"b":[1e400,null]}]}"#,
        "\u{feff} [{\"auditID\":\"1\"}]\n{\"auditID\":\"2\"}\n",
        "{\"items\":[{\"a\":1},\n {\"b\":tru}]}",
        r#""a scalar \n text""#,
        "{\"a\":\"\\ud800\"}",
    ];
    for text in texts {
        let want = decode(
            &Bytes::copy_from_slice(text.as_bytes()),
            &DecodeOptions::default(),
        );
        // A unique buffer with no spare room, and one shared with a clone.
        let unique = Bytes::from(text.as_bytes().to_vec());
        let shared = Bytes::copy_from_slice(text.as_bytes());
        let keep = shared.clone();
        for body in [unique, shared] {
            let (body, got) = decode_owned(body, &DecodeOptions::default());
            assert_eq!(&body[..], text.as_bytes(), "the body changed: {text}");
            match (&want, got) {
                (Ok(want), Ok(got)) => {
                    let lines =
                        |d: &Decoded| d.events.iter().map(|e| e.raw.clone()).collect::<Vec<_>>();
                    assert_eq!(lines(want), lines(&got), "{text}");
                    let range = body.as_ptr_range();
                    for e in got.events.iter().filter(|e| !e.raw.is_empty()) {
                        assert!(
                            range.contains(&e.raw.as_ptr()),
                            "not a slice of the body: {text}"
                        );
                    }
                }
                (Err(want), Err(got)) => assert_eq!(*want, got, "{text}"),
                (want, got) => panic!("{text}: {want:?} but {got:?}"),
            }
        }
        drop(keep);
    }
}

#[test]
fn status_codes_are_plain_integers_that_fit_in_u16() {
    for (text, want) in [
        ("403", Some(403)),
        ("0", Some(0)),
        ("65535", Some(65535)),
        ("65536", None),
        ("100000", None),
        ("403.0", None),
        ("4e2", None),
        ("-1", None),
        ("-0", None),
        ("\"403\"", None),
        ("null", None),
        ("", None),
    ] {
        assert_eq!(super::status_code(text.as_bytes()), want, "{text}");
    }
    let body = Bytes::from_static(
        br#"[{"auditID":"a","responseStatus":{"metadata":{},"code":1e3}},{"auditID":"b","responseStatus":{"code":201,"status":"x"}}]"#,
    );
    let d = decode(&body, &DecodeOptions::default()).unwrap();
    assert_eq!(d.events[0].meta.code, None);
    assert_eq!(d.events[1].meta.code, Some(201));
}
