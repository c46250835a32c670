//! `JsonBody<T>`: the JSON request body of every operation, read as strictly as the document
//! describes it.
//!
//! poem-openapi's own `Json<T>` is lenient where the document is not: a `string` field takes a
//! number or a boolean (`"description": false` became the text `"false"`). Before `T` parses
//! the body, [`check`] walks it against `T`'s schema and refuses any value whose JSON type the
//! schema does not allow, with a 400 naming the field, so that the server accepts exactly the
//! types the document promises. Values are then checked by `T`'s own validators as before.
//! The WebSocket resource actions parse their payloads with [`parse`], the same rule.

use std::ops::Deref;

use poem::{FromRequest, Request, RequestBody};
use poem_openapi::{
    error::ParseRequestPayloadError,
    impl_apirequest_for_payload,
    payload::{Json, ParsePayload, Payload},
    registry::{MetaSchema, MetaSchemaRef, Registry},
    types::{ParseFromJSON, Type},
};
use serde_json::Value;

/// A JSON request body of type `T`, checked against `T`'s documented schema.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T> Deref for JsonBody<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Type> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = <Json<T> as Payload>::CONTENT_TYPE;

    fn check_content_type(content_type: &str) -> bool {
        <Json<T> as Payload>::check_content_type(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: ParseFromJSON> ParsePayload for JsonBody<T> {
    const IS_REQUIRED: bool = T::IS_REQUIRED;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let data = Vec::<u8>::from_request(request, body).await?;
        let value = if data.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&data).map_err(|err| ParseRequestPayloadError {
                reason: err.to_string(),
            })?
        };
        parse(value, "body")
            .map(Self)
            .map_err(|reason| ParseRequestPayloadError { reason }.into())
    }
}

impl_apirequest_for_payload!(JsonBody<T>, T: ParseFromJSON);

/// Parses `value` as `T`: first [`check`], then `T`'s parser and validators. The error says
/// what was wrong, naming the field from `root` (`body.price`, `payload.price`).
pub fn parse<T: ParseFromJSON>(value: Value, root: &str) -> Result<T, String> {
    let mut registry = Registry::new();
    T::register(&mut registry);
    check(&value, &T::schema_ref(), &registry, root)?;
    T::parse_from_json(Some(value)).map_err(|err| err.into_message())
}

/// Whether `value` has the JSON types `schema` allows (types only: lengths, ranges, patterns
/// and enumerations are the parser's). `null` is allowed only where the schema says
/// `nullable`. `at` names the value in the error.
pub fn check(
    value: &Value,
    schema: &MetaSchemaRef,
    registry: &Registry,
    at: &str,
) -> Result<(), String> {
    let schema = resolve(schema, registry);
    if value.is_null() {
        return if schema.nullable {
            Ok(())
        } else {
            Err(format!("{at} must not be null"))
        };
    }
    check_shape(value, schema, registry, at)
}

fn check_shape(
    value: &Value,
    schema: &MetaSchema,
    registry: &Registry,
    at: &str,
) -> Result<(), String> {
    let fits = match schema.ty {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => true,
    };
    if !fits {
        return Err(format!("{at} must be {}", article(schema.ty)));
    }
    match value {
        Value::Array(items) => {
            if let Some(item_schema) = &schema.items {
                for (i, item) in items.iter().enumerate() {
                    check(item, item_schema, registry, &format!("{at}[{i}]"))?;
                }
            }
        }
        Value::Object(fields) => {
            for (name, field) in fields {
                let field_schema = schema
                    .properties
                    .iter()
                    .find(|(property, _)| property == name)
                    .map(|(_, s)| s)
                    .or(schema.additional_properties.as_deref());
                if let Some(field_schema) = field_schema {
                    check(field, field_schema, registry, &format!("{at}.{name}"))?;
                }
            }
        }
        _ => {}
    }
    for part in &schema.all_of {
        check_shape(value, resolve(part, registry), registry, at)?;
    }
    let alternatives = schema.one_of.iter().chain(&schema.any_of);
    let mut errors = Vec::new();
    for alternative in alternatives {
        match check_shape(value, resolve(alternative, registry), registry, at) {
            Ok(()) => return Ok(()),
            Err(err) => errors.push(err),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join(", or "))
    }
}

fn resolve<'a>(schema: &'a MetaSchemaRef, registry: &'a Registry) -> &'a MetaSchema {
    match schema {
        MetaSchemaRef::Inline(schema) => schema,
        MetaSchemaRef::Reference(name) => registry
            .schemas
            .get(name)
            .unwrap_or_else(|| panic!("schema {name} is registered with its type")),
    }
}

fn article(ty: &str) -> String {
    match ty {
        "integer" | "array" | "object" => format!("an {ty}"),
        _ => format!("a {ty}"),
    }
}

#[cfg(test)]
mod tests {
    use poem_openapi::Object;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Object)]
    struct Inner {
        flag: bool,
    }

    #[derive(Debug, Object)]
    struct Sample {
        name: String,
        #[oai(nullable)]
        note: Option<String>,
        count: Option<i32>,
        tags: Vec<String>,
        inner: Option<Inner>,
    }

    fn parsed(value: Value) -> Result<Sample, String> {
        parse::<Sample>(value, "body")
    }

    #[test]
    fn documented_types_parse() {
        let sample = parsed(json!({
            "name": "a", "note": null, "count": 3, "tags": ["x"], "inner": {"flag": true}
        }))
        .unwrap();
        assert_eq!(sample.name, "a");
        assert!(sample.note.is_none());
        // Fields the schema does not know are left alone, as the document allows them.
        parsed(json!({"name": "a", "tags": [], "extra": [1, {}]})).unwrap();
    }

    #[test]
    fn other_types_are_refused_naming_the_field() {
        for (body, field) in [
            (json!({"name": 5, "tags": []}), "body.name must be a string"),
            (
                json!({"name": false, "tags": []}),
                "body.name must be a string",
            ),
            (
                json!({"name": "a", "tags": [1]}),
                "body.tags[0] must be a string",
            ),
            (
                json!({"name": "a", "tags": [], "count": "3"}),
                "body.count must be an integer",
            ),
            (
                json!({"name": "a", "tags": [], "count": 1.5}),
                "body.count must be an integer",
            ),
            (
                json!({"name": "a", "tags": [], "count": null}),
                "body.count must not be null",
            ),
            (
                json!({"name": "a", "tags": [], "inner": {"flag": "yes"}}),
                "body.inner.flag must be a boolean",
            ),
            (
                json!({"name": "a", "tags": [], "inner": null}),
                "body.inner must not be null",
            ),
            (json!([]), "body must be an object"),
            (Value::Null, "body must not be null"),
        ] {
            assert_eq!(parsed(body.clone()).unwrap_err(), field, "{body}");
        }
    }
}
