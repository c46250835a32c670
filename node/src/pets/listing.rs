//! The pet list: filters, sorting, and pagination by offset or by keyset cursor.
//!
//! Sorting always ends with `pet_id`, so `(sort value, pet_id)` is a total order and a cursor —
//! the last row's pair — resumes exactly where the page ended, however rows are added meanwhile.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
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
    /// Resume after this position (cursor pagination); excludes `offset`.
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
    /// Rows skipped (0 with a cursor).
    pub offset: i64,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

/// A position in a sorted list: the sort and the last row's `(value, id)`.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Cursor {
    sort: PetSort,
    order: SortOrder,
    value: String,
    id: i64,
}

impl Cursor {
    fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("cursor serialises"))
    }

    fn decode(text: &str) -> Result<Self, ApiError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| ApiError::bad_request("cursor is malformed"))?;
        serde_json::from_slice(&bytes).map_err(|_| ApiError::bad_request("cursor is malformed"))
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

    /// The SQL type the cursor value is cast to.
    fn cast(self) -> &'static str {
        match self {
            PetSort::Name => "text",
            PetSort::Price => "numeric",
            PetSort::CreatedAt => "timestamptz",
        }
    }

    /// The cursor value of `pet` for this sort, as text PostgreSQL casts back exactly.
    fn value_of(self, pet: &Pet) -> String {
        match self {
            PetSort::Name => pet.name.clone(),
            PetSort::Price => pet.price.to_string(),
            PetSort::CreatedAt => pet
                .created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        }
    }
}

impl PetFilter {
    /// 400 for contradictory filters.
    pub fn validate(&self) -> Result<(), ApiError> {
        if let (Some(min), Some(max)) = (self.min_price, self.max_price) {
            if min > max {
                return Err(ApiError::bad_request(format!(
                    "minPrice {min} is greater than maxPrice {max}"
                )));
            }
        }
        Ok(())
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
    filter.validate()?;
    let cursor = page.cursor.as_deref().map(Cursor::decode).transpose()?;
    if let Some(cursor) = &cursor {
        if cursor.sort != page.sort || cursor.order != page.order {
            return Err(ApiError::bad_request(
                "cursor was made for another sort or order",
            ));
        }
        if page.offset != 0 {
            return Err(ApiError::bad_request(
                "give either offset or cursor, not both",
            ));
        }
    }

    let mut count = QueryBuilder::new("select count(*) from pet");
    filter.push_where(&mut count);
    let total: i64 = count.build_query_scalar().fetch_one(db).await?;

    let (column, direction) = (
        page.sort.column(),
        match page.order {
            SortOrder::Asc => "asc",
            SortOrder::Desc => "desc",
        },
    );
    let mut rows = QueryBuilder::new(format!("select {PET_COLUMNS} from pet"));
    filter.push_where(&mut rows);
    if let Some(cursor) = &cursor {
        let comparison = if page.order == SortOrder::Asc {
            ">"
        } else {
            "<"
        };
        rows.push(format!(" and ({column}, pet_id) {comparison} ("))
            .push_bind(cursor.value.clone())
            .push(format!("::{}, ", page.sort.cast()))
            .push_bind(cursor.id)
            .push(")");
    }
    rows.push(format!(
        " order by {column} {direction}, pet_id {direction} limit "
    ))
    .push_bind(page.limit + 1);
    if cursor.is_none() {
        rows.push(" offset ").push_bind(page.offset);
    }
    let mut items: Vec<Pet> = rows.build_query_as().fetch_all(db).await?;

    let more = items.len() as i64 > page.limit;
    items.truncate(page.limit as usize);
    let next_cursor = match items.last() {
        Some(last) if more => Some(
            Cursor {
                sort: page.sort,
                order: page.order,
                value: page.sort.value_of(last),
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
        offset: if cursor.is_some() { 0 } else { page.offset },
        next_cursor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = Cursor {
            sort: PetSort::Price,
            order: SortOrder::Desc,
            value: "12.50".into(),
            id: 7,
        };
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        assert!(Cursor::decode("not base64!").is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode(b"{}")).is_err());
    }

    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(escape_like("50%_off\\"), "50\\%\\_off\\\\");
    }
}
