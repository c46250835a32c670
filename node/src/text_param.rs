//! `TextParam<R>`: a string parameter (or JSON field) whose documented `pattern` is checked by
//! hand-written code instead of poem-openapi's `pattern` validator.
//!
//! poem-openapi compiles a validator's regular expression on every check. That is cheap for
//! short patterns but not for the cursor's (`[^\x00]{1,100}` alone expands to about 700 µs of
//! compilation per request in a release build), which would sit on the pagination path. A
//! [`TextRule`] carries the pattern for the document and a function that accepts exactly the
//! strings the pattern matches; each rule's module tests the two against each other.

use std::{borrow::Cow, marker::PhantomData};

use poem_openapi::{
    registry::{MetaSchema, MetaSchemaRef},
    types::{ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON, Type},
};
use serde_json::Value;

/// A rule for a text parameter.
pub trait TextRule: Send + Sync + 'static {
    /// The name of the type in error messages.
    const NAME: &'static str;
    /// The documented pattern (an ECMAScript regular expression, as JSON Schema has it).
    const PATTERN: &'static str;
    /// What the document says about the value.
    const DESCRIPTION: &'static str;
    /// Whether `text` matches [`Self::PATTERN`], by other means than compiling it.
    fn accepts(text: &str) -> bool;
}

/// A string that follows rule `R`.
pub struct TextParam<R>(pub String, PhantomData<R>);

impl<R> std::fmt::Debug for TextParam<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TextParam").field(&self.0).finish()
    }
}

impl<R> Clone for TextParam<R> {
    fn clone(&self) -> Self {
        Self(self.0.clone(), PhantomData)
    }
}

impl<R: TextRule> TextParam<R> {
    /// `text` if it follows the rule; the error names the pattern.
    pub fn new(text: String) -> Result<Self, String> {
        if R::accepts(&text) {
            Ok(Self(text, PhantomData))
        } else {
            Err(format!("{} must match {}", R::NAME, R::PATTERN))
        }
    }
}

impl<R: TextRule> Type for TextParam<R> {
    const IS_REQUIRED: bool = true;

    type RawValueType = Self;

    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        let mut schema = MetaSchema::new("string");
        schema.pattern = Some(R::PATTERN.to_owned());
        schema.description = Some(R::DESCRIPTION);
        MetaSchemaRef::Inline(Box::new(schema))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl<R: TextRule> ParseFromParameter for TextParam<R> {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Self::new(value.to_owned()).map_err(ParseError::custom)
    }
}

impl<R: TextRule> ParseFromJSON for TextParam<R> {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value.unwrap_or_default() {
            Value::String(text) => Self::new(text).map_err(ParseError::custom),
            other => Err(ParseError::expected_type(other)),
        }
    }
}

impl<R: TextRule> ToJSON for TextParam<R> {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}
