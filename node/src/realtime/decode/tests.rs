//! Property tests of [`super`]: every text frame a client could send decodes to an action or
//! to an error with a code, never a panic; what can round-trip does. Each property runs
//! [`CASES`] generated cases and says so on stderr (shown by nextest, see
//! `.config/nextest.toml`).

use proptest::{
    collection::{btree_map, vec},
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};
use serde_json::{json, Map};
use uuid::Uuid;

use super::*;
use crate::realtime::resources::RESOURCE_ACTIONS;

/// Generated cases per property.
const CASES: u32 = 1024;

/// Runs `test` on `CASES` values of `strategy`, then reports the count.
fn check<S: Strategy>(
    name: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let config = Config {
        cases: CASES,
        source_file: Some(file!()),
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    if let Err(err) = runner.run(&strategy, test) {
        panic!("{name}: {err}");
    }
    eprintln!("proptest: {name}: {CASES} cases passed");
}

/// Every action name the protocol knows, and a registered-looking custom one.
fn known_actions() -> Vec<&'static str> {
    ACTIONS
        .iter()
        .chain(RESOURCE_ACTIONS)
        .copied()
        .chain(["chat:typing"])
        .collect()
}

/// Field names the payloads use, so that generated objects reach past "missing field".
const FIELDS: &[&str] = &[
    "token",
    "topics",
    "since",
    "roomId",
    "content",
    "type",
    "id",
    "version",
    "name",
    "category",
    "price",
    "tags",
    "photoUrls",
    "status",
    "stock",
    "petId",
    "quantity",
    "paymentToken",
    "idempotencyKey",
    "userId",
    "limit",
    "offset",
    "sort",
    "order",
    "minPrice",
    "maxPrice",
    "cursor",
    "tag",
];

/// Strings that mean something somewhere: topics, offsets, prices, cursors, statuses.
fn telling_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("pets".to_owned()),
        Just("orders".to_owned()),
        Just("available".to_owned()),
        Just(String::new()),
        "room:[A-Za-z0-9_.-]{0,70}",
        "user:[0-9a-f-]{0,40}",
        "[A-Za-z0-9]{0,34}:[0-9]{0,21}",
        "-?[0-9]{0,12}(\\.[0-9]{0,4})?",
        "(name|price|createdAt):(asc|desc):[0-9]{1,19}:.{0,5}",
        "[A-Za-z][A-Za-z0-9_.:-]{0,20}",
        any::<String>(),
    ]
}

/// Any JSON value, weighted towards the shapes requests have.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
        telling_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(field_name(), inner, 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(FIELDS).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    btree_map(field_name(), json_value(), 0..8).prop_map(|fields| fields.into_iter().collect())
}

fn action_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(known_actions()).prop_map(str::to_owned),
        1 => telling_string(),
    ]
}

fn id() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        "[ -~]{0,130}".prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
        json_value(),
    ]
}

/// Text a client could send: anything at all, any JSON, or a frame-shaped object in either
/// form with any id, action and payload.
fn frame_text() -> impl Strategy<Value = String> {
    let shaped = (
        any::<bool>(),
        proptest::option::of(id()),
        action_name(),
        proptest::option::of(json_value()),
        json_object(),
    )
        .prop_map(|(long, id, action, payload, extra)| {
            let mut frame = extra;
            let (action_key, payload_key) = if long {
                frame.insert("type".into(), json!("request"));
                ("action", "payload")
            } else {
                ("event", "data")
            };
            frame.insert(action_key.into(), json!(action));
            if let Some(payload) = payload {
                frame.insert(payload_key.into(), payload);
            }
            if let Some(id) = id {
                frame.insert("id".into(), id);
            }
            Value::Object(frame).to_string()
        });
    prop_oneof![
        1 => any::<String>(),
        1 => json_value().prop_map(|v| v.to_string()),
        4 => shaped,
    ]
}

/// The error answer for `(id, err)` is a response frame that carries `id` and the code.
fn answers_with_its_code(id: &Value, err: &WsError) -> Result<(), TestCaseError> {
    let frame: Value = serde_json::from_str(&protocol::failure(id, "", err))
        .map_err(|e| TestCaseError::fail(format!("error frame is not JSON: {e}")))?;
    prop_assert_eq!(&frame["type"], "response");
    prop_assert_eq!(&frame["status"], "error");
    prop_assert_eq!(&frame["id"], id);
    prop_assert_eq!(&frame["payload"]["code"], err.code.as_str());
    Ok(())
}

#[test]
fn proptest_any_text_frame_decodes_to_an_action_or_an_error_with_a_code() {
    check("text frames", frame_text(), |text| {
        match decode_frame(&text) {
            Ok((request, _action)) => {
                prop_assert!((1..=100).contains(&request.action.len()));
                prop_assert!(request.payload.is_object());
                prop_assert!(matches!(
                    request.id,
                    Value::Null | Value::String(_) | Value::Number(_)
                ));
            }
            Err((id, err)) => {
                let is_json = serde_json::from_str::<Value>(&text).is_ok();
                if !is_json {
                    prop_assert_eq!(err.code, ErrorCode::InvalidJson);
                } else {
                    prop_assert!(matches!(
                        err.code,
                        ErrorCode::InvalidJson
                            | ErrorCode::ValidationError
                            | ErrorCode::UnknownAction
                    ));
                }
                prop_assert!(!err.message.is_empty());
                answers_with_its_code(&id, &err)?;
            }
        }
        Ok(())
    });
}

/// Found by the property above: a correlation id that is a float must come back exactly as
/// sent, or the client cannot match the answer (serde_json parses floats exactly only with
/// its `float_roundtrip` feature).
#[test]
fn a_float_correlation_id_is_echoed_exactly() {
    let text = r#"{"event":"auth:login","id":-1.963971377239822e+63}"#;
    let id = match decode_frame(text) {
        Ok((request, _)) => request.id,
        Err((id, err)) => {
            answers_with_its_code(&id, &err).unwrap();
            id
        }
    };
    assert_eq!(id.to_string(), "-1.963971377239822e+63");
}

#[test]
fn proptest_any_payload_of_a_known_action_decodes_or_is_a_validation_error() {
    let strategy = (proptest::sample::select(known_actions()), json_object());
    check(
        "payloads of known actions",
        strategy,
        |(action, payload)| {
            let request = ClientRequest {
                id: json!("1"),
                action: action.to_owned(),
                payload: Value::Object(payload),
            };
            if let Err(err) = decode(&request) {
                prop_assert_eq!(err.code, ErrorCode::ValidationError, "{}", err.message);
            }
            // Who may ask depends on the name only.
            prop_assert_eq!(
                access(action) == Access::Anyone,
                matches!(action, "ping" | "auth:login")
            );
            Ok(())
        },
    );
}

#[test]
fn proptest_well_formed_requests_read_the_same_in_both_forms() {
    let strategy = (
        prop_oneof![
            Just(Value::Null),
            "[ -~]{0,128}".prop_map(Value::String),
            any::<i64>().prop_map(Value::from),
        ],
        prop_oneof![
            proptest::sample::select(known_actions()).prop_map(str::to_owned),
            "[^\\x00]{1,100}".prop_filter("1 to 100 bytes", |a| a.len() <= 100),
        ],
        proptest::option::of(json_object()),
    );
    check("request forms", strategy, |(id, action, payload)| {
        let mut long = json!({"type": "request", "action": action});
        let mut short = json!({"event": action});
        if let Some(payload) = &payload {
            long["payload"] = Value::Object(payload.clone());
            short["data"] = Value::Object(payload.clone());
        }
        if !id.is_null() {
            long["id"] = id.clone();
            short["id"] = id.clone();
        }
        // The payload as JSON reads back: serde_json's float parsing is not correctly
        // rounded in the last bit for every number, and this property is about the frame.
        let payload = Value::Object(payload.unwrap_or_default());
        let expected = ClientRequest {
            id,
            action,
            payload: serde_json::from_str(&payload.to_string()).unwrap(),
        };
        let long = protocol::parse_request(&long.to_string())
            .map_err(|(_, e)| TestCaseError::fail(e.message))?;
        let short = protocol::parse_request(&short.to_string())
            .map_err(|(_, e)| TestCaseError::fail(e.message))?;
        prop_assert_eq!(&long, &expected);
        prop_assert_eq!(&short, &expected);
        Ok(())
    });
}

fn topic() -> impl Strategy<Value = Topic> {
    prop_oneof![
        Just(Topic::Pets),
        Just(Topic::Orders),
        any::<u128>().prop_map(|n| Topic::User(Uuid::from_u128(n))),
        "[A-Za-z0-9_.-]{1,64}".prop_map(Topic::Room),
        "[A-Za-z][A-Za-z0-9_.:-]{0,99}"
            .prop_filter("not another kind of topic", |name| {
                !matches!(name.as_str(), "pets" | "orders")
                    && !name.starts_with("user:")
                    && !name.starts_with("room:")
            })
            .prop_map(Topic::Custom),
    ]
}

fn offset() -> impl Strategy<Value = Offset> {
    ("[A-Za-z0-9]{1,32}", any::<u64>()).prop_map(|(epoch, seq)| Offset {
        epoch: epoch.into(),
        seq,
    })
}

#[test]
fn proptest_subscriptions_decode_to_the_topics_and_offsets_they_name() {
    let strategy = vec((topic(), proptest::option::of(offset())), 1..=MAX_TOPICS);
    check("subscriptions", strategy, |topics| {
        let names: Vec<String> = topics.iter().map(|(t, _)| t.to_string()).collect();
        let since: Map<String, Value> = topics
            .iter()
            .filter_map(|(t, o)| o.as_ref().map(|o| (t.to_string(), json!(o.to_string()))))
            .collect();
        let request = ClientRequest {
            id: Value::Null,
            action: "subscribe".into(),
            payload: json!({"topics": names, "since": since}),
        };
        let Action::Subscribe {
            topics: decoded,
            since: decoded_since,
        } = decode(&request).map_err(|e| TestCaseError::fail(e.message))?
        else {
            return Err(TestCaseError::fail("not a subscription"));
        };
        let wanted: Vec<Topic> = topics.iter().map(|(t, _)| t.clone()).collect();
        prop_assert_eq!(decoded, wanted);
        for (name, offset) in &decoded_since {
            prop_assert_eq!(&since[name], &json!(offset.to_string()));
        }
        prop_assert_eq!(decoded_since.len(), since.len());
        Ok(())
    });
}

#[test]
fn proptest_room_messages_decode_exactly_when_their_content_is_sendable() {
    let strategy = (
        prop_oneof!["[A-Za-z0-9_.-]{1,64}", any::<String>()],
        prop_oneof![".{0,20}", "\\s{0,3}", ".{3990,4010}"],
        proptest::option::of(prop_oneof![
            Just("text"),
            Just("system"),
            Just("notification"),
            Just("shout")
        ]),
    );
    check("room messages", strategy, |(room, content, kind)| {
        let mut payload = json!({"roomId": room, "content": content});
        if let Some(kind) = kind {
            payload["type"] = json!(kind);
        }
        let request = ClientRequest {
            id: Value::Null,
            action: "room:message".into(),
            payload,
        };
        let sendable = is_valid_room_id(&room)
            && !content.trim().is_empty()
            && content.chars().count() <= MAX_MESSAGE_CHARS
            && kind != Some("shout");
        match decode(&request) {
            Ok(Action::RoomMessage {
                room: r,
                content: c,
                kind: k,
            }) => {
                prop_assert!(sendable);
                prop_assert_eq!((r, c, k), (room, content, kind.unwrap_or("text")));
            }
            Ok(other) => return Err(TestCaseError::fail(format!("decoded {other:?}"))),
            Err(err) => {
                prop_assert!(!sendable, "refused: {}", err.message);
                prop_assert_eq!(err.code, ErrorCode::ValidationError);
            }
        }
        Ok(())
    });
}

#[test]
fn proptest_valid_pets_decode_to_the_same_pet() {
    let strategy = (
        "[^\\x00]{1,100}",
        "[^\\x00]{1,50}",
        vec("[^\\x00]{1,30}", 0..=4),
        (0u64..10_000_000_000, proptest::option::of(0u8..100)),
        0i32..=1_000_000,
    );
    check(
        "pets.create",
        strategy,
        |(name, category, tags, (units, cents), stock)| {
            let price = match cents {
                Some(cents) => format!("{units}.{cents:02}"),
                None => units.to_string(),
            };
            let request = ClientRequest {
                id: Value::Null,
                action: "pets.create".into(),
                payload: json!({
                    "name": name, "category": category, "tags": tags,
                    "price": price, "stock": stock,
                }),
            };
            let Action::Resource(ResourceAction::PetsCreate(pet)) =
                decode(&request).map_err(|e| TestCaseError::fail(e.message))?
            else {
                return Err(TestCaseError::fail("not pets.create"));
            };
            prop_assert_eq!((pet.name, pet.category, pet.tags), (name, category, tags));
            prop_assert_eq!(pet.price.0, price.parse::<rust_decimal::Decimal>().unwrap());
            prop_assert_eq!(pet.stock, stock);
            Ok(())
        },
    );
}

#[test]
fn proptest_topics_and_offsets_print_as_they_parse() {
    check(
        "topic and offset names",
        (topic(), offset()),
        |(topic, offset)| {
            let name = topic.to_string();
            prop_assert_eq!(
                Topic::parse(&name).map_err(|e| TestCaseError::fail(e.message))?,
                topic
            );
            prop_assert_eq!(offset.to_string().parse::<Offset>(), Ok(offset));
            Ok(())
        },
    );
}
