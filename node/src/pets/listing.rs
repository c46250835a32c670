//! The pet list: filters, sorting, and pagination by offset or by keyset cursor.
//!
//! Sorting always ends with `pet_id`, so `(sort value, pet_id)` is a total order and a cursor —
//! the last row's pair — resumes exactly where the page ended, however rows are added meanwhile.
//!
//! A cursor is plain text, `<sort>:<order>:<pet id>:<value>` (`price:desc:42:129.99`,
//! `createdAt:asc:7:<microseconds since 1970>`, `name:asc:3:Bella 1`), so that the document
//! can say with a pattern ([`CURSOR_PATTERN`]) exactly which cursors the server takes: every
//! string matching it names a position. It carries its sort and order, which then apply
//! whatever `sort` and `order` say, and an `offset` given with it skips rows after it.

use chrono::{DateTime, Utc};
use poem_openapi::{Enum, Object};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, QueryBuilder};

use super::{Pet, PetStatus, PET_COLUMNS};
use crate::error::ApiError;

/// Sort keys of the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Enum)]
#[oai(rename_all = "camelCase")]
pub enum PetSort {
    /// By name.
    Name,
    /// By price.
    Price,
    /// By creation time.
    CreatedAt,
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Enum)]
#[oai(rename_all = "lowercase")]
pub enum SortOrder {
    /// Ascending.
    Asc,
    /// Descending.
    Desc,
}

/// The pattern of a cursor: what [`Cursor::decode`] takes (a test keeps them equal).
pub const CURSOR_PATTERN: &str = r"^(name:(asc|desc):[0-9]{1,18}:[^\x00]{1,100}|price:(asc|desc):[0-9]{1,18}:[0-9]{1,10}(\.[0-9]{1,2})?|createdAt:(asc|desc):[0-9]{1,18}:-?[0-9]{1,16})$";

/// The `cursor` parameter: a `nextCursor`, or any string of its shape.
pub struct CursorText;

impl crate::text_param::TextRule for CursorText {
    const NAME: &'static str = "cursor";
    const PATTERN: &'static str = CURSOR_PATTERN;
    const DESCRIPTION: &'static str = "`<sort>:<order>:<pet id>:<value>`, as in `nextCursor`.";

    fn accepts(text: &str) -> bool {
        Cursor::read(text).is_some()
    }
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct PetFilter {
    /// Any of these statuses (all when empty).
    pub statuses: Vec<PetStatus>,
    /// Exact category.
    pub category: Option<String>,
    /// Has this tag.
    pub tag: Option<String>,
    /// Name contains this, ignoring case.
    pub name: Option<String>,
    /// Price at least.
    pub min_price: Option<Decimal>,
    /// Price at most.
    pub max_price: Option<Decimal>,
}

/// Which page.
#[derive(Debug, Clone)]
pub struct PetPage {
    /// Sort key.
    pub sort: PetSort,
    /// Direction.
    pub order: SortOrder,
    /// Page size, 1–100.
    pub limit: i64,
    /// Rows to skip (offset pagination).
    pub offset: i64,
    /// Resume after this position (cursor pagination), in this position's sort and order.
    pub cursor: Option<String>,
}

/// One page of pets.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct PetList {
    /// The pets on this page.
    pub items: Vec<Pet>,
    /// How many pets match the filters (all pages).
    pub total: i64,
    /// The page size asked for.
    pub limit: i64,
    /// Rows skipped (after the cursor, with one).
    pub offset: i64,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

/// A position in a sorted list: the sort and order, and the last row's `(value, id)`.
#[derive(Debug, PartialEq)]
struct Cursor {
    sort: PetSort,
    order: SortOrder,
    value: SortValue,
    id: i64,
}

/// A row's value of the sort column.
#[derive(Debug, PartialEq)]
enum SortValue {
    Name(String),
    Price(Decimal),
    CreatedAt(DateTime<Utc>),
}

impl Cursor {
    fn encode(&self) -> String {
        let sort = match self.sort {
            PetSort::Name => "name",
            PetSort::Price => "price",
            PetSort::CreatedAt => "createdAt",
        };
        let order = match self.order {
            SortOrder::Asc => "asc",
            SortOrder::Desc => "desc",
        };
        let value = match &self.value {
            SortValue::Name(name) => name.clone(),
            SortValue::Price(price) => price.to_string(),
            SortValue::CreatedAt(at) => at.timestamp_micros().to_string(),
        };
        format!("{sort}:{order}:{}:{value}", self.id)
    }

    /// Reads a cursor: exactly the strings [`CURSOR_PATTERN`] matches.
    fn decode(text: &str) -> Result<Self, ApiError> {
        Self::read(text).ok_or_else(|| {
            ApiError::bad_request("cursor is malformed; pass a nextCursor as it was given")
        })
    }

    fn read(text: &str) -> Option<Self> {
        let mut parts = text.splitn(4, ':');
        let (sort, order, id, value) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let order = match order {
            "asc" => SortOrder::Asc,
            "desc" => SortOrder::Desc,
            _ => return None,
        };
        if !(1..=18).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let id = id.parse().ok()?;
        let (sort, value) = match sort {
            "name" => {
                let chars = value.chars().count();
                if !(1..=100).contains(&chars) || value.contains('\0') {
                    return None;
                }
                (PetSort::Name, SortValue::Name(value.to_owned()))
            }
            "price" => (
                PetSort::Price,
                SortValue::Price(super::price::Price::parse_text(value)?.0),
            ),
            "createdAt" => {
                let digits = value.strip_prefix('-').unwrap_or(value);
                if !(1..=16).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return None;
                }
                let micros = value.parse().ok()?;
                (
                    PetSort::CreatedAt,
                    SortValue::CreatedAt(DateTime::from_timestamp_micros(micros)?),
                )
            }
            _ => return None,
        };
        Some(Self {
            sort,
            order,
            value,
            id,
        })
    }
}

impl PetSort {
    fn column(self) -> &'static str {
        match self {
            PetSort::Name => "name",
            PetSort::Price => "price",
            PetSort::CreatedAt => "created_at",
        }
    }

    /// The cursor value of `pet` for this sort (`created_at` has microseconds, as in
    /// PostgreSQL).
    fn value_of(self, pet: &Pet) -> SortValue {
        match self {
            PetSort::Name => SortValue::Name(pet.name.clone()),
            PetSort::Price => SortValue::Price(pet.price),
            PetSort::CreatedAt => SortValue::CreatedAt(pet.created_at),
        }
    }
}

impl PetFilter {
    /// Whether no pet can match: a text filter with U+0000, which no stored text has (and which
    /// PostgreSQL could not even compare).
    fn matches_nothing(&self) -> bool {
        [&self.category, &self.tag, &self.name]
            .into_iter()
            .flatten()
            .any(|text| text.contains('\0'))
    }

    fn push_where(&self, query: &mut QueryBuilder<'_, Postgres>) {
        query.push(" where true");
        if !self.statuses.is_empty() {
            let statuses: Vec<&str> = self.statuses.iter().map(|s| s.as_str()).collect();
            query
                .push(" and status = any(")
                .push_bind(statuses)
                .push(")");
        }
        if let Some(category) = &self.category {
            query.push(" and category = ").push_bind(category.clone());
        }
        if let Some(tag) = &self.tag {
            query
                .push(" and tags @> array[")
                .push_bind(tag.clone())
                .push("]::text[]");
        }
        if let Some(name) = &self.name {
            let pattern = format!("%{}%", escape_like(&name.to_lowercase()));
            query.push(" and lower(name) like ").push_bind(pattern);
        }
        if let Some(min) = self.min_price {
            query.push(" and price >= ").push_bind(min);
        }
        if let Some(max) = self.max_price {
            query.push(" and price <= ").push_bind(max);
        }
    }
}

/// `%` and `_` in a search term are literal characters, not wildcards.
fn escape_like(term: &str) -> String {
    term.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// One page of pets matching `filter`, with the total.
pub async fn list(db: &PgPool, filter: &PetFilter, page: &PetPage) -> Result<PetList, ApiError> {
    let cursor = page.cursor.as_deref().map(Cursor::decode).transpose()?;
    if filter.matches_nothing() {
        return Ok(PetList {
            items: Vec::new(),
            total: 0,
            limit: page.limit,
            offset: page.offset,
            next_cursor: None,
        });
    }
    // A cursor resumes the listing it came from: its sort and order apply.
    let (sort, order) = cursor
        .as_ref()
        .map_or((page.sort, page.order), |c| (c.sort, c.order));

    let mut count = QueryBuilder::new("select count(*) from pet");
    filter.push_where(&mut count);
    let total: i64 = count.build_query_scalar().fetch_one(db).await?;

    let (column, direction) = (
        sort.column(),
        match order {
            SortOrder::Asc => "asc",
            SortOrder::Desc => "desc",
        },
    );
    let mut rows = QueryBuilder::new(format!("select {PET_COLUMNS} from pet"));
    filter.push_where(&mut rows);
    if let Some(cursor) = &cursor {
        let comparison = if order == SortOrder::Asc { ">" } else { "<" };
        rows.push(format!(" and ({column}, pet_id) {comparison} ("));
        match &cursor.value {
            SortValue::Name(name) => rows.push_bind(name.clone()),
            SortValue::Price(price) => rows.push_bind(*price),
            SortValue::CreatedAt(at) => rows.push_bind(*at),
        };
        rows.push(", ").push_bind(cursor.id).push(")");
    }
    rows.push(format!(
        " order by {column} {direction}, pet_id {direction} limit "
    ))
    .push_bind(page.limit + 1)
    .push(" offset ")
    .push_bind(page.offset);
    let mut items: Vec<Pet> = rows.build_query_as().fetch_all(db).await?;

    let more = items.len() as i64 > page.limit;
    items.truncate(page.limit as usize);
    let next_cursor = match items.last() {
        Some(last) if more => Some(
            Cursor {
                sort,
                order,
                value: sort.value_of(last),
                id: last.id,
            }
            .encode(),
        ),
        _ => None,
    };
    Ok(PetList {
        items,
        total,
        limit: page.limit,
        offset: page.offset,
        next_cursor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let at = DateTime::from_timestamp_micros(1_733_300_000_123_456).unwrap();
        for cursor in [
            Cursor {
                sort: PetSort::Price,
                order: SortOrder::Desc,
                value: SortValue::Price("12.50".parse().unwrap()),
                id: 7,
            },
            Cursor {
                sort: PetSort::Name,
                order: SortOrder::Asc,
                value: SortValue::Name("Bella: the 1st".into()),
                id: 0,
            },
            Cursor {
                sort: PetSort::CreatedAt,
                order: SortOrder::Asc,
                value: SortValue::CreatedAt(at),
                id: 123_456_789_012_345_678,
            },
        ] {
            let text = cursor.encode();
            assert_eq!(Cursor::decode(&text).unwrap(), cursor, "{text}");
        }
        assert!(Cursor::decode("not-a-cursor").is_err());
        assert!(Cursor::decode("price:asc:1:-3").is_err());
        assert!(Cursor::decode("name:up:1:x").is_err());
    }

    #[test]
    fn the_cursor_pattern_matches_exactly_what_decodes() {
        let pattern = regex::Regex::new(CURSOR_PATTERN).unwrap();
        for text in [
            "name:asc:1:x",
            "name:desc:999999999999999999:a:b:c",
            "price:asc:0:0",
            "price:desc:12:9999999999.99",
            "createdAt:asc:5:-9999999999999999",
            "createdAt:desc:5:1733300000123456",
            "createdAt:asc:5:0",
            "price:asc:1:-3",
            "price:asc:1:1.234",
            "name:asc:1:",
            "name:asc::x",
            "name:asc:1234567890123456789:x",
            "createdAt:asc:5:12345678901234567",
            "createdAt:asc:5:1.5",
            "weight:asc:1:1",
            "",
        ] {
            assert_eq!(
                pattern.is_match(text),
                Cursor::decode(text).is_ok(),
                "{text}"
            );
        }
        let long_name = format!("name:asc:1:{}", "é".repeat(100));
        assert!(pattern.is_match(&long_name) && Cursor::decode(&long_name).is_ok());
        let too_long = format!("name:asc:1:{}", "é".repeat(101));
        assert!(!pattern.is_match(&too_long) && Cursor::decode(&too_long).is_err());
    }

    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(escape_like("50%_off\\"), "50\\%\\_off\\\\");
    }
}
