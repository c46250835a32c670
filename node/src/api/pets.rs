//! `/api/v1/pets`: the catalogue. Everyone logged in reads; admins write, conditionally on
//! `If-Match` so that two admins never silently overwrite each other.

use poem::{
    http::{header, HeaderMap},
    web::Data,
};
use poem_openapi::{
    param::{Header, Path, Query},
    payload::{Binary, Json, Response},
    ApiResponse, Object, OpenApi,
};
use rust_decimal::Decimal;

use super::{header_param, image_body::ImageUpload, json_body::JsonBody, ApiTags, NoContent};
use crate::{
    auth::BearerAuth,
    error::{ApiError, ApiResult},
    pets::{
        self, expected_version, images,
        listing::{self, CursorText, PetFilter, PetList, PetPage, PetSort, SortOrder},
        price::{Price, PriceText},
        Pet, PetInput, PetPatch, PetStatus,
    },
    state::AppState,
    text_param::TextParam,
};

/// The catalogue.
pub struct PetsApi;

/// A pet with its ETag.
#[derive(ApiResponse)]
pub enum PetResponse {
    /// The pet.
    #[oai(status = 200)]
    Ok(
        Json<Pet>,
        /// `"<version>"`; send it back in `If-Match` to update conditionally.
        #[oai(header = "ETag")]
        String,
    ),
}

/// A created pet with its ETag.
#[derive(ApiResponse)]
pub enum PetCreated {
    /// The pet was added.
    #[oai(status = 201)]
    Created(
        Json<Pet>,
        /// `"<version>"`.
        #[oai(header = "ETag")]
        String,
    ),
}

/// What `uploadImage` answers: the pet-store `ApiResponse` (`code`, `type`, `message`, as
/// Swagger's pet store has it, so its clients read it), plus the image's URL so that nobody
/// has to parse it out of the message. The pet itself changed too (`photoUrls`, ETag): read
/// it again, or take it from the `pet:updated` event.
#[derive(Debug, Object)]
#[oai(rename = "ApiResponse")]
pub struct UploadAnswer {
    /// The HTTP status, 200.
    pub code: i32,
    /// Always `image`.
    #[oai(rename = "type")]
    pub kind: String,
    /// What was stored, and `additionalMetadata` when sent.
    pub message: String,
    /// Where the image is served (also appended to the pet's `photoUrls`).
    pub url: String,
    /// The image's id (the last segment of `url`).
    #[oai(rename = "imageId")]
    pub image_id: i64,
}

/// An image, or that the client's copy is current.
#[derive(ApiResponse)]
pub enum ImageResponse {
    /// The image, in its own media type (`image/png`, `image/jpeg`, `image/webp`,
    /// `image/gif`).
    #[oai(status = 200, content_type = "image/*")]
    Ok(
        Binary<Vec<u8>>,
        /// `"<sha256 of the bytes>"`, a strong validator.
        #[oai(header = "ETag")]
        String,
        /// `public, max-age=31536000, immutable`: an image never changes under its URL.
        #[oai(header = "Cache-Control")]
        String,
    ),
    /// `If-None-Match` names this image: the client's copy is current.
    #[oai(status = 304)]
    NotModified(
        /// As for 200.
        #[oai(header = "ETag")]
        String,
        /// As for 200.
        #[oai(header = "Cache-Control")]
        String,
    ),
}

/// Images are immutable under their URL, so any cache may keep them for good.
const IMAGE_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// A `minPrice`/`maxPrice` value, already checked against its pattern.
fn price_filter(text: TextParam<PriceText>) -> Decimal {
    Price::parse_text(&text.0).map_or(Decimal::ZERO, Decimal::from)
}

fn with_etag(pet: Pet) -> PetResponse {
    let etag = pet.etag();
    PetResponse::Ok(Json(pet), etag)
}

fn default_limit() -> i64 {
    20
}

fn default_sort() -> PetSort {
    PetSort::CreatedAt
}

fn default_order() -> SortOrder {
    SortOrder::Asc
}

#[OpenApi(prefix_path = "/api/v1/pets", tag = "ApiTags::Pets")]
impl PetsApi {
    /// Lists pets with filters, sorting and pagination (offset or cursor), with the total.
    #[allow(clippy::too_many_arguments)]
    #[oai(path = "/", method = "get", operation_id = "listPets")]
    async fn list(
        &self,
        state: Data<&AppState>,
        _auth: BearerAuth,
        /// Any of these statuses (repeat the parameter for several).
        #[oai(default)]
        status: Query<Vec<PetStatus>>,
        /// Exact category.
        #[oai(validator(min_length = 1, max_length = 50))]
        category: Query<Option<String>>,
        /// Pets with this tag.
        #[oai(validator(min_length = 1, max_length = 30))]
        tag: Query<Option<String>>,
        /// Name contains this (ignoring case).
        #[oai(validator(min_length = 1, max_length = 100))]
        name: Query<Option<String>>,
        /// Lowest price, written as prices are (`"129.99"`). Above `maxPrice`, nothing matches.
        #[oai(name = "minPrice")]
        min_price: Query<Option<TextParam<PriceText>>>,
        /// Highest price, written as prices are.
        #[oai(name = "maxPrice")]
        max_price: Query<Option<TextParam<PriceText>>>,
        /// `name`, `price` or `createdAt` (default).
        #[oai(default = "default_sort")]
        sort: Query<PetSort>,
        /// `asc` (default) or `desc`.
        #[oai(default = "default_order")]
        order: Query<SortOrder>,
        /// Page size, 1–100 (default 20).
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "100"))
        )]
        limit: Query<i64>,
        /// Rows to skip (offset pagination).
        #[oai(default, validator(minimum(value = "0")))]
        offset: Query<i64>,
        /// `nextCursor` of the previous page (cursor pagination): the listing resumes after
        /// it, in its sort and order; an `offset` skips further rows.
        cursor: Query<Option<TextParam<CursorText>>>,
    ) -> ApiResult<Json<PetList>> {
        let filter = PetFilter {
            statuses: status.0,
            category: category.0,
            tag: tag.0,
            name: name.0,
            min_price: min_price.0.map(price_filter),
            max_price: max_price.0.map(price_filter),
        };
        let page = PetPage {
            sort: sort.0,
            order: order.0,
            limit: limit.0,
            offset: offset.0,
            cursor: cursor.0.map(|c| c.0),
        };
        Ok(Json(listing::list(&state.db, &filter, &page).await?))
    }

    /// Pets with any of the given statuses, by id (the classic pet-store call).
    #[oai(
        path = "/findByStatus",
        method = "get",
        operation_id = "findPetsByStatus"
    )]
    async fn find_by_status(
        &self,
        state: Data<&AppState>,
        _auth: BearerAuth,
        /// One or more statuses (repeat the parameter).
        status: Query<Vec<PetStatus>>,
    ) -> ApiResult<Json<Vec<Pet>>> {
        if status.0.is_empty() {
            return Err(ApiError::bad_request("give at least one `status`"));
        }
        let statuses: Vec<&str> = status.0.iter().map(|s| s.as_str()).collect();
        let found = sqlx::query_as::<_, Pet>(&format!(
            "select {} from pet where status = any($1) order by pet_id",
            pets::PET_COLUMNS
        ))
        .bind(statuses)
        .fetch_all(&state.db)
        .await?;
        Ok(Json(found))
    }

    /// One pet, with its ETag.
    #[oai(path = "/:id", method = "get", operation_id = "getPet")]
    async fn get(
        &self,
        state: Data<&AppState>,
        _auth: BearerAuth,
        id: Path<i64>,
    ) -> ApiResult<PetResponse> {
        Ok(with_etag(pets::get(&state, id.0).await?))
    }

    /// Adds a pet (admins).
    #[oai(path = "/", method = "post", operation_id = "createPet")]
    async fn create(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        body: JsonBody<PetInput>,
    ) -> ApiResult<PetCreated> {
        auth.0.require_admin()?;
        let pet = pets::create(&state, body.0).await?;
        let etag = pet.etag();
        Ok(PetCreated::Created(Json(pet), etag))
    }

    /// Replaces a pet (admins). With `If-Match`, only if the pet is still at that version (412
    /// otherwise).
    #[oai(path = "/:id", method = "put", operation_id = "replacePet")]
    async fn replace(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        id: Path<i64>,
        /// The ETag the change is based on (`"<version>"`), or `*`; empty is the same as absent.
        #[oai(name = "If-Match", validator(pattern = r#"^(\*|(W/)?"[!#-~]*")?$"#))]
        if_match: Header<Option<String>>,
        headers: &HeaderMap,
        body: JsonBody<PetInput>,
    ) -> ApiResult<PetResponse> {
        auth.0.require_admin()?;
        let if_match = header_param(headers, "If-Match", if_match.0)?;
        let expected = expected_version(if_match.as_deref())?;
        Ok(with_etag(
            pets::update(&state, id.0, body.0.into(), expected).await?,
        ))
    }

    /// Changes some fields of a pet (admins); `If-Match` as for PUT.
    #[oai(path = "/:id", method = "patch", operation_id = "patchPet")]
    async fn patch(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        id: Path<i64>,
        /// The ETag the change is based on (`"<version>"`), or `*`; empty is the same as absent.
        #[oai(name = "If-Match", validator(pattern = r#"^(\*|(W/)?"[!#-~]*")?$"#))]
        if_match: Header<Option<String>>,
        headers: &HeaderMap,
        body: JsonBody<PetPatch>,
    ) -> ApiResult<PetResponse> {
        auth.0.require_admin()?;
        let if_match = header_param(headers, "If-Match", if_match.0)?;
        let expected = expected_version(if_match.as_deref())?;
        Ok(with_etag(
            pets::update(&state, id.0, body.0, expected).await?,
        ))
    }

    /// Deletes a pet (admins); `If-Match` as for PUT. Its orders keep their copy of it.
    #[oai(path = "/:id", method = "delete", operation_id = "deletePet")]
    async fn delete(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        id: Path<i64>,
        /// The ETag the deletion is based on (`"<version>"`), or `*`; empty is the same as
        /// absent.
        #[oai(name = "If-Match", validator(pattern = r#"^(\*|(W/)?"[!#-~]*")?$"#))]
        if_match: Header<Option<String>>,
        headers: &HeaderMap,
    ) -> ApiResult<NoContent> {
        auth.0.require_admin()?;
        let if_match = header_param(headers, "If-Match", if_match.0)?;
        let expected = expected_version(if_match.as_deref())?;
        pets::delete(&state, id.0, expected).await?;
        Ok(NoContent::Done)
    }

    /// Adds an image to a pet (admins): multipart `file` (PNG, JPEG, WebP or GIF, judged by
    /// its content; at most `pets.max_image_bytes`, default 5 MiB) and optional
    /// `additionalMetadata`. The image's URL is appended to the pet's `photoUrls` (at most 10)
    /// and a `pet:updated` event goes out.
    #[oai(
        path = "/:id/uploadImage",
        method = "post",
        operation_id = "uploadFile"
    )]
    async fn upload_image(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        id: Path<i64>,
        body: ImageUpload,
    ) -> ApiResult<Json<UploadAnswer>> {
        auth.0.require_admin()?;
        let stored = images::store(&state, id.0, body.kind, &body.data).await?;
        let mut message = format!(
            "stored {} bytes of {} as image {} of pet {}",
            body.data.len(),
            body.kind.content_type(),
            stored.image_id,
            stored.pet.id
        );
        if let Some(metadata) = &body.additional_metadata {
            message.push_str("; additionalMetadata: ");
            message.push_str(metadata);
        }
        Ok(Json(UploadAnswer {
            code: 200,
            kind: "image".into(),
            message,
            url: stored.url,
            image_id: stored.image_id,
        }))
    }

    /// One image of a pet, by the URL in its `photoUrls`; anyone may read it (an `<img>` sends
    /// no token). Immutable: strong `ETag`, cacheable for a year, `If-None-Match` → 304.
    #[oai(
        path = "/:id/images/:imageId",
        method = "get",
        operation_id = "getPetImage"
    )]
    async fn get_image(
        &self,
        state: Data<&AppState>,
        id: Path<i64>,
        /// The image's id, from its URL.
        #[oai(name = "imageId")]
        image_id: Path<i64>,
        /// ETags of copies the client has.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<String>>,
    ) -> ApiResult<Response<ImageResponse>> {
        let meta = images::meta(&state, id.0, image_id.0).await?;
        let etag = meta.etag();
        let cache_control = IMAGE_CACHE_CONTROL.to_owned();
        if if_none_match
            .0
            .as_deref()
            .is_some_and(|tags| images::none_match(tags, &etag))
        {
            return Ok(Response::new(ImageResponse::NotModified(
                etag,
                cache_control,
            )));
        }
        let data = images::data(&state, id.0, image_id.0).await?;
        Ok(
            Response::new(ImageResponse::Ok(Binary(data), etag, cache_control))
                .header(header::CONTENT_TYPE, meta.content_type),
        )
    }
}
