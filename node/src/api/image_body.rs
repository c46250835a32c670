//! `ImageUpload`: the multipart body of `uploadImage`, read as a stream.
//!
//! poem-openapi's `#[derive(Multipart)]` with `Upload` copies every file part into a temporary
//! file before the handler sees it, whatever its size or type. This payload is documented by
//! such a struct ([`UploadImageForm`], so the document has a real multipart schema) but parses
//! the body itself: the `file` part is read chunk by chunk into one buffer that never grows past
//! `pets.max_image_bytes`, its first bytes decide its type before the rest is read, and a
//! refused body is still read to its end (bounded by the upload body limit of
//! [`crate::limits::Limits`]) so that a client writing everything first reads the refusal.

use poem::{web::Multipart, FromRequest, IntoResponse, Request, RequestBody};
use poem_openapi::{
    impl_apirequest_for_payload,
    payload::{ParsePayload, Payload},
    registry::{MetaSchemaRef, Registry},
    types::multipart::Upload,
    Multipart as MultipartDoc,
};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::{
    error::ApiError,
    pets::images::{self, ImageType},
    state::AppState,
};

/// The form `uploadImage` takes. Only its schema is used (see the module comment).
#[allow(dead_code)] // Parsed by `ImageUpload`, never by the derive.
#[derive(Debug, MultipartDoc)]
#[oai(rename_all = "camelCase")]
pub struct UploadImageForm {
    /// The image: PNG, JPEG, WebP or GIF (judged by its content), at most
    /// `pets.max_image_bytes` (default 5 MiB).
    file: Upload,
    /// Free text about the image, up to 1000 characters; echoed in the answer's message.
    additional_metadata: Option<String>,
}

/// Most characters of `additionalMetadata`.
const MAX_METADATA_CHARS: usize = 1000;

/// A parsed upload: the image's bytes (one copy) and its type.
#[derive(Debug)]
pub struct ImageUpload {
    /// The image's bytes.
    pub data: Vec<u8>,
    /// Its type, from its first bytes.
    pub kind: ImageType,
    /// The `additionalMetadata` part, if sent.
    pub additional_metadata: Option<String>,
}

impl Payload for ImageUpload {
    const CONTENT_TYPE: &'static str = <UploadImageForm as Payload>::CONTENT_TYPE;

    fn check_content_type(content_type: &str) -> bool {
        <UploadImageForm as Payload>::check_content_type(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        <UploadImageForm as Payload>::schema_ref()
    }

    fn register(registry: &mut Registry) {
        <UploadImageForm as Payload>::register(registry);
    }
}

impl ParsePayload for ImageUpload {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let max_bytes = request
            .data::<AppState>()
            .map_or(5 * 1024 * 1024, |state| state.max_image_bytes);
        let mut multipart = Multipart::from_request(request, body).await?;
        let result = read_form(&mut multipart, max_bytes).await;
        if result.is_err() {
            drain(&mut multipart).await;
        }
        result.map_err(|err| poem::Error::from_response(err.into_response()))
    }
}

impl_apirequest_for_payload!(ImageUpload);

/// Reads the parts of the form; any other part is refused, as the document says.
async fn read_form(multipart: &mut Multipart, max_bytes: usize) -> Result<ImageUpload, ApiError> {
    let malformed = |err: poem::error::ParseMultipartError| {
        ApiError::bad_request(format!("malformed multipart body: {err}"))
    };
    let mut file = None;
    let mut additional_metadata = None;
    while let Some(field) = multipart.next_field().await.map_err(malformed)? {
        match field.name() {
            Some("file") if file.is_none() => {
                file = Some(read_image(field.into_async_read(), max_bytes).await?);
            }
            Some("additionalMetadata") if additional_metadata.is_none() => {
                let text = field.text().await.map_err(malformed)?;
                if text.chars().count() > MAX_METADATA_CHARS {
                    return Err(ApiError::bad_request(format!(
                        "additionalMetadata must be at most {MAX_METADATA_CHARS} characters"
                    )));
                }
                additional_metadata = Some(text);
            }
            Some(name @ ("file" | "additionalMetadata")) => {
                return Err(ApiError::bad_request(format!("`{name}` is sent twice")));
            }
            _ => {
                return Err(ApiError::bad_request(
                    "the form takes only `file` and `additionalMetadata`",
                ))
            }
        }
    }
    let (data, kind) = file.ok_or_else(|| ApiError::bad_request("the `file` part is missing"))?;
    Ok(ImageUpload {
        data,
        kind,
        additional_metadata,
    })
}

/// Reads an image part into one buffer of at most `max_bytes`, deciding its type from its
/// first bytes: 415 as soon as they are not an image's, 413 as soon as it passes the limit.
async fn read_image(
    reader: impl AsyncRead + Send,
    max_bytes: usize,
) -> Result<(Vec<u8>, ImageType), ApiError> {
    let mut reader = std::pin::pin!(reader);
    let mut data = Vec::new();
    let mut kind = None;
    loop {
        // Grows in steps, never past the limit (one byte beyond tells it was passed).
        let room = (max_bytes + 1 - data.len()).min(64 * 1024);
        data.reserve(room);
        let read = (&mut reader)
            .take(room as u64)
            .read_buf(&mut data)
            .await
            .map_err(|err| ApiError::bad_request(format!("reading the `file` part: {err}")))?;
        if data.len() > max_bytes {
            return Err(images::too_large(max_bytes));
        }
        if kind.is_none() && (read == 0 || data.len() >= ImageType::SNIFF_BYTES) {
            kind = Some(ImageType::sniff(&data).ok_or_else(images::not_an_image)?);
        }
        if read == 0 {
            break;
        }
    }
    Ok((data, kind.ok_or_else(images::not_an_image)?))
}

/// Reads a part to its end and throws it away.
async fn discard(reader: impl AsyncRead + Send) {
    let _ = tokio::io::copy(&mut std::pin::pin!(reader), &mut tokio::io::sink()).await;
}

/// Reads what is left of a refused form, so that the refusal reaches a client that writes its
/// whole body first. Bounded: the upload body limit already capped the body.
async fn drain(multipart: &mut Multipart) {
    while let Ok(Some(field)) = multipart.next_field().await {
        discard(field.into_async_read()).await;
    }
}
