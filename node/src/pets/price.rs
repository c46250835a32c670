//! `Price`: a price as clients send it, a decimal string or a JSON number, with the document
//! and the parser agreeing exactly on which are accepted.
//!
//! The exact form is a string of up to 10 integer digits and up to 2 decimals (`"129.99"`);
//! anything else in a string is refused. Older clients send JSON numbers (README: prices are
//! "accepted as strings or numbers"), so numbers from 0 to 9999999999.99 are accepted too and
//! rounded to the cent, half to even: a binary floating-point number is rarely the exact
//! decimal it was written as, and JSON Schema cannot say "at most 2 decimal places" of a
//! number (`multipleOf: 0.01` fails for 0.07 in exact arithmetic), so rounding is what the
//! document can promise. Prices are always written back as strings.

use std::borrow::Cow;

use poem_openapi::{
    registry::{MetaSchema, MetaSchemaRef, Registry},
    types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type},
};
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::Value;

/// The pattern of a price string (and of the `minPrice`/`maxPrice` filters).
pub const PRICE_PATTERN: &str = r"^[0-9]{1,10}(\.[0-9]{1,2})?$";

/// A price written as text, the form of the `minPrice`/`maxPrice` filters.
pub struct PriceText;

impl crate::text_param::TextRule for PriceText {
    const NAME: &'static str = "a price";
    const PATTERN: &'static str = PRICE_PATTERN;
    const DESCRIPTION: &'static str = "Up to 10 digits, then up to 2 decimals (`\"129.99\"`).";

    fn accepts(text: &str) -> bool {
        Price::parse_text(text).is_some()
    }
}

/// The largest price a JSON number may give.
const MAX_NUMBER: f64 = 9_999_999_999.99;

/// A price from a request: ≥ 0, below 10^10, at most 2 decimal places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price(pub Decimal);

impl From<Price> for Decimal {
    fn from(price: Price) -> Decimal {
        price.0
    }
}

impl Price {
    /// Parses the string form; `None` unless `text` matches [`PRICE_PATTERN`].
    pub fn parse_text(text: &str) -> Option<Price> {
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        let shaped = (1..=10).contains(&whole.len())
            && digits(whole)
            && (!text.contains('.') || (1..=2).contains(&fraction.len()) && digits(fraction));
        shaped.then(|| Price(text.parse().expect("a shaped price parses")))
    }

    /// The number form: in range, rounded to the cent (half to even); `None` otherwise.
    pub fn from_number(number: f64) -> Option<Price> {
        if !(0.0..=MAX_NUMBER).contains(&number) {
            return None;
        }
        // Far below a cent (and below what `Decimal` can hold): zero.
        let exact = if number < 1e-9 {
            Decimal::ZERO
        } else {
            Decimal::try_from(number).ok()?
        };
        let cents = exact.round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven);
        // -0.0 and amounts that round to nothing are plain zero.
        Some(Price(if cents.is_zero() {
            Decimal::ZERO
        } else {
            cents
        }))
    }
}

impl Type for Price {
    const IS_REQUIRED: bool = true;

    type RawValueType = Self;

    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "Price".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Reference(Self::name().into_owned())
    }

    fn register(registry: &mut Registry) {
        registry.create_schema::<Self, _>(Self::name().into_owned(), |_| {
            let mut text = MetaSchema::new_with_format("string", "decimal");
            text.pattern = Some(PRICE_PATTERN.to_owned());
            text.description = Some("Exact: up to 10 digits, then up to 2 decimals.");
            let mut number = MetaSchema::new("number");
            number.minimum = Some(0.0);
            number.maximum = Some(MAX_NUMBER);
            number.description = Some("Rounded to the cent, half to even.");
            MetaSchema {
                description: Some(
                    "A price ≥ 0 and below 10^10: a decimal string with at most 2 decimal \
                     places (`\"129.99\"`, exact), or a JSON number, rounded to the cent.",
                ),
                any_of: vec![
                    MetaSchemaRef::Inline(Box::new(text)),
                    MetaSchemaRef::Inline(Box::new(number)),
                ],
                ..MetaSchema::new("")
            }
        });
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

impl ParseFromJSON for Price {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value.unwrap_or_default() {
            Value::String(text) => Price::parse_text(&text).ok_or_else(|| {
                ParseError::custom(
                    "a price string has up to 10 digits, then up to 2 decimals (\"129.99\")",
                )
            }),
            Value::Number(number) => number
                .as_f64()
                .and_then(Price::from_number)
                .ok_or_else(|| ParseError::custom("a price number is from 0 to 9999999999.99")),
            other => Err(ParseError::expected_type(other)),
        }
    }
}

impl ToJSON for Price {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Option<String> {
        Price::parse_text(s).map(|p| p.0.to_string())
    }

    #[test]
    fn strings_are_exact_and_follow_the_pattern() {
        let pattern = regex::Regex::new(PRICE_PATTERN).unwrap();
        for ok in ["0", "129.99", "12.5", "0000000001.10", "9999999999.99"] {
            assert!(pattern.is_match(ok), "{ok}");
            assert_eq!(
                text(ok).unwrap(),
                ok.parse::<Decimal>().unwrap().to_string()
            );
        }
        for bad in [
            "",
            ".5",
            "5.",
            "1.234",
            "-1",
            "+1",
            "1e3",
            " 1",
            "1 ",
            "12345678901",
            "1,5",
            "١",
        ] {
            assert!(!pattern.is_match(bad), "{bad}");
            assert_eq!(text(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn numbers_in_range_round_to_the_cent() {
        let number = |n: f64| Price::from_number(n).map(|p| p.0.to_string());
        assert_eq!(number(129.99).unwrap(), "129.99");
        assert_eq!(number(0.07).unwrap(), "0.07");
        assert_eq!(number(12.5).unwrap(), "12.5");
        assert_eq!(number(0.125).unwrap(), "0.12");
        assert_eq!(number(0.135).unwrap(), "0.14");
        assert_eq!(number(1e-300).unwrap(), "0");
        assert_eq!(number(-0.0).unwrap(), "0");
        assert_eq!(number(0.004).unwrap(), "0");
        assert_eq!(number(9_999_999_999.99).unwrap(), "9999999999.99");
        assert_eq!(number(-0.01), None);
        assert_eq!(number(1e10), None);
        assert_eq!(number(f64::INFINITY), None);
    }

    #[test]
    fn other_json_types_are_refused() {
        for value in [Value::Bool(true), Value::Null, serde_json::json!([1])] {
            assert!(Price::parse_from_json(Some(value)).is_err());
        }
    }
}
