//! Pet images: what types are accepted (by their first bytes, never by a client's word), how an
//! upload is stored with the `photoUrls` entry that points at it, and how one is read back.
//!
//! Images are immutable: each upload is a new row with a new id, so its URL and its ETag (the
//! SHA-256 of its bytes) never change meaning and may be cached forever.

use sha2::{Digest, Sha256};

use super::{event, Pet, PET_COLUMNS};
use crate::{error::ApiError, outbox, state::AppState};

/// Most `photoUrls` a pet may have, as the pet schema says; an upload beyond it is refused.
const MAX_PHOTO_URLS: i32 = 10;

/// An accepted image type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageType {
    /// PNG.
    Png,
    /// JPEG.
    Jpeg,
    /// WebP.
    Webp,
    /// GIF (87a or 89a).
    Gif,
}

impl ImageType {
    /// Bytes [`ImageType::sniff`] needs to decide (WebP's signature ends at byte 12).
    pub const SNIFF_BYTES: usize = 12;

    /// The type whose signature `head` (the first bytes of a file) starts with, if any.
    pub fn sniff(head: &[u8]) -> Option<Self> {
        if head.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Self::Png)
        } else if head.starts_with(&[0xff, 0xd8, 0xff]) {
            Some(Self::Jpeg)
        } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
            Some(Self::Gif)
        } else if head.len() >= 12 && head.starts_with(b"RIFF") && &head[8..12] == b"WEBP" {
            Some(Self::Webp)
        } else {
            None
        }
    }

    /// Its media type.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
            Self::Gif => "image/gif",
        }
    }
}

/// The 415 for a file that is none of the accepted types.
pub fn not_an_image() -> ApiError {
    ApiError::unsupported_media_type(
        "file is not an image of an accepted type (PNG, JPEG, WebP or GIF, judged by its content)",
    )
}

/// The 413 for an image over `max_bytes`.
pub fn too_large(max_bytes: usize) -> ApiError {
    ApiError::payload_too_large(format!(
        "image exceeds the limit of {max_bytes} bytes (pets.max_image_bytes)"
    ))
}

/// The stable URL of an image, served by every node.
pub fn url(pet_id: i64, image_id: i64) -> String {
    format!("/api/v1/pets/{pet_id}/images/{image_id}")
}

/// A stored image.
#[derive(Debug)]
pub struct StoredImage {
    /// Its id.
    pub image_id: i64,
    /// Its URL (also appended to the pet's `photoUrls`).
    pub url: String,
    /// The pet after the upload.
    pub pet: Pet,
}

/// Stores `data` (already checked to be of `kind`) as an image of pet `pet_id` and appends its
/// URL to the pet's `photoUrls`, in one transaction with the `pet:updated` event; then
/// refreshes the cache as every pet write does.
pub async fn store(
    state: &AppState,
    pet_id: i64,
    kind: ImageType,
    data: &[u8],
) -> Result<StoredImage, ApiError> {
    let sha256 = hex_sha256(data);
    let mut tx = state.db.begin().await?;
    // Locks the pet, so that concurrent uploads count its photos one after the other.
    let photos: Option<i32> =
        sqlx::query_scalar("select cardinality(photo_urls) from pet where pet_id = $1 for update")
            .bind(pet_id)
            .fetch_optional(&mut *tx)
            .await?;
    match photos {
        None => return Err(ApiError::not_found(format!("pet {pet_id} not found"))),
        Some(n) if n >= MAX_PHOTO_URLS => {
            return Err(ApiError::conflict(format!(
                "pet {pet_id} already has {MAX_PHOTO_URLS} photoUrls; remove one first"
            )))
        }
        Some(_) => {}
    }
    let image_id: i64 = sqlx::query_scalar(
        "insert into pet_image (pet_id, content_type, byte_size, sha256, data)
         values ($1, $2, $3, $4, $5) returning image_id",
    )
    .bind(pet_id)
    .bind(kind.content_type())
    .bind(data.len() as i32)
    .bind(&sha256)
    .bind(data)
    .fetch_one(&mut *tx)
    .await?;
    let url = url(pet_id, image_id);
    let pet = sqlx::query_as::<_, Pet>(&format!(
        "update pet set photo_urls = array_append(photo_urls, $2), version = version + 1
         where pet_id = $1 returning {PET_COLUMNS}"
    ))
    .bind(pet_id)
    .bind(&url)
    .fetch_one(&mut *tx)
    .await?;
    outbox::record(&mut tx, vec![event(state, "pet:updated", &pet)]).await?;
    tx.commit().await?;
    super::changed(state, &pet).await;
    Ok(StoredImage { image_id, url, pet })
}

/// An image's type and strong ETag, without its bytes.
#[derive(Debug, sqlx::FromRow)]
pub struct ImageMeta {
    /// Its media type.
    pub content_type: String,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
}

impl ImageMeta {
    /// The strong ETag: `"<sha256>"`.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.sha256)
    }
}

/// Image `image_id` of pet `pet_id`, without its bytes (enough to answer a conditional GET).
pub async fn meta(state: &AppState, pet_id: i64, image_id: i64) -> Result<ImageMeta, ApiError> {
    sqlx::query_as::<_, ImageMeta>(
        "select content_type, sha256 from pet_image where pet_id = $1 and image_id = $2",
    )
    .bind(pet_id)
    .bind(image_id)
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("pet {pet_id} has no image {image_id}")))
}

/// The bytes of image `image_id` of pet `pet_id`.
pub async fn data(state: &AppState, pet_id: i64, image_id: i64) -> Result<Vec<u8>, ApiError> {
    sqlx::query_scalar("select data from pet_image where pet_id = $1 and image_id = $2")
        .bind(pet_id)
        .bind(image_id)
        .fetch_optional(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("pet {pet_id} has no image {image_id}")))
}

/// Whether an `If-None-Match` value names `etag` (or is `*`); weak comparison, as RFC 9110
/// § 13.1.2 asks for this header.
pub fn none_match(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

fn hex_sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_recognised_by_their_signature_only() {
        assert_eq!(
            ImageType::sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
            Some(ImageType::Png)
        );
        assert_eq!(
            ImageType::sniff(&[0xff, 0xd8, 0xff, 0xe0]),
            Some(ImageType::Jpeg)
        );
        assert_eq!(ImageType::sniff(b"GIF89a\x01\x00"), Some(ImageType::Gif));
        assert_eq!(
            ImageType::sniff(b"RIFF\x24\0\0\0WEBPVP8 "),
            Some(ImageType::Webp)
        );
        assert_eq!(ImageType::sniff(b"RIFF\x24\0\0\0WAVEfmt "), None);
        assert_eq!(ImageType::sniff(b"hello, I am a .png"), None);
        assert_eq!(ImageType::sniff(b""), None);
    }

    #[test]
    fn if_none_match_lists_and_wildcards_match() {
        let etag = "\"ab\"";
        assert!(none_match("\"ab\"", etag));
        assert!(none_match("\"x\", W/\"ab\"", etag));
        assert!(none_match("*", etag));
        assert!(!none_match("\"abc\"", etag));
    }

    #[test]
    fn the_etag_is_the_hex_sha256() {
        assert_eq!(
            hex_sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
