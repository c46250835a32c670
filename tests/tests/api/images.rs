//! Pet images (`POST /api/v1/pets/{id}/uploadImage`, `GET /api/v1/pets/{id}/images/{imageId}`):
//! the round trip across nodes with type, ETag and caching; types judged by content; the size
//! limit's 413 readable by a client that writes everything first; who may upload; the URL in
//! `photoUrls` and the `pet:updated` event.

use std::time::Duration;

use petmesh_tests::{assert_error, ws::WsClient, ApiClient, TestCluster, TestResponse};
use reqwest::Method;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::helpers::{admin, create_pet, signed_up};

const BOUNDARY: &str = "petmesh-test-boundary";

/// A PNG's signature followed by `len - 8` bytes of a pattern: the node judges only the
/// signature.
fn png(len: usize) -> Vec<u8> {
    let mut data = b"\x89PNG\r\n\x1a\n".to_vec();
    data.extend((0..len.saturating_sub(8)).map(|i| (i * 7 % 251) as u8));
    data
}

/// A `multipart/form-data` body with `file` (named `file_name`, declared `image/png`) and,
/// if given, `additionalMetadata`.
fn form(file: &[u8], file_name: &str, metadata: Option<&str>) -> Vec<u8> {
    let mut body = Vec::new();
    if let Some(metadata) = metadata {
        body.extend(
            format!(
                "--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"additionalMetadata\"\r\n\r\n{metadata}\r\n"
            )
            .into_bytes(),
        );
    }
    body.extend(
        format!(
            "--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\ncontent-type: image/png\r\n\r\n"
        )
        .into_bytes(),
    );
    body.extend_from_slice(file);
    body.extend(format!("\r\n--{BOUNDARY}--\r\n").into_bytes());
    body
}

async fn upload(client: &ApiClient, pet_id: i64, body: Vec<u8>) -> TestResponse {
    client
        .send(
            client
                .request(Method::POST, &format!("/api/v1/pets/{pet_id}/uploadImage"))
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={BOUNDARY}"),
                )
                .body(body),
        )
        .await
        .unwrap()
}

fn hex_sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn an_image_uploaded_through_one_node_is_served_by_another_and_announced() {
    let cluster = TestCluster::start(2).await;
    let token = admin(&cluster).await.access_token;
    let (a, b) = (
        cluster.client(0).token(&token),
        cluster.client(1).token(&token),
    );
    let pet_id = create_pet(&a, "Pixel", "5.00", 1).await["id"]
        .as_i64()
        .unwrap();
    let watcher = signed_up(&b, "watcher").await;
    let mut ws = WsClient::login(&cluster.node(1).base_url(), &watcher.tokens.access_token)
        .await
        .unwrap();
    ws.subscribe(&["pets"]).await.unwrap();

    // Over the 1 MiB general body limit: uploads have their own.
    let image = png(2 << 20);
    let answer = upload(&a, pet_id, form(&image, "pixel.png", Some("front view"))).await;
    answer.assert_status(200);
    assert_eq!(answer.body["code"], 200, "{}", answer.text);
    assert_eq!(answer.body["type"], "image");
    assert!(answer.body["message"]
        .as_str()
        .unwrap()
        .contains("front view"));
    let url = answer.body["url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&format!("/api/v1/pets/{pet_id}/images/")),
        "{url}"
    );

    // Announced, with the URL already in the pet.
    let event = ws
        .event_where(|e| e["event"] == "pet:updated" && e["payload"]["id"] == pet_id)
        .await
        .unwrap();
    assert_eq!(event["payload"]["photoUrls"], serde_json::json!([url]));
    let pet = b.get(&format!("/api/v1/pets/{pet_id}")).await.unwrap();
    pet.assert_status(200);
    assert_eq!(pet.body["photoUrls"], serde_json::json!([url]));
    assert_eq!(pet.body["version"], 2);

    // Served by the other node, to anyone, byte for byte.
    let http = reqwest::Client::new();
    let served = http
        .get(format!("{}{url}", cluster.node(1).base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(
        header(&served, "content-type").as_deref(),
        Some("image/png")
    );
    let etag = format!("\"{}\"", hex_sha256(&image));
    assert_eq!(header(&served, "etag"), Some(etag.clone()));
    assert_eq!(
        header(&served, "cache-control").as_deref(),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(served.bytes().await.unwrap().as_ref(), &image[..]);

    // A copy that is current is not sent again; another tag gets the image.
    let conditional = |tag: &str| {
        http.get(format!("{}{url}", cluster.node(0).base_url()))
            .header("if-none-match", tag.to_owned())
            .send()
    };
    let current = conditional(&etag).await.unwrap();
    assert_eq!(current.status(), 304);
    assert_eq!(header(&current, "etag"), Some(etag.clone()));
    assert!(current.bytes().await.unwrap().is_empty());
    assert_eq!(conditional("\"other\"").await.unwrap().status(), 200);

    // Every accepted type is recognised by its content, whatever the part declares.
    for (head, content_type) in [
        (&[0xff, 0xd8, 0xff, 0xe0][..], "image/jpeg"),
        (b"GIF89a", "image/gif"),
        (b"RIFF\x10\0\0\0WEBPVP8 ", "image/webp"),
    ] {
        let mut data = head.to_vec();
        data.extend_from_slice(&[1; 32]);
        let answer = upload(&b, pet_id, form(&data, "x.png", None)).await;
        answer.assert_status(200);
        let url = answer.body["url"].as_str().unwrap();
        let served = http
            .get(format!("{}{url}", cluster.node(0).base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(
            header(&served, "content-type").as_deref(),
            Some(content_type)
        );
        assert_eq!(served.bytes().await.unwrap().as_ref(), &data[..]);
    }

    // An unknown image of a known pet is a 404.
    let missing = a
        .get(&format!("/api/v1/pets/{pet_id}/images/999999"))
        .await
        .unwrap();
    assert_error(&missing, 404);
}

#[tokio::test]
async fn a_file_that_is_not_an_image_gets_415_and_changes_nothing() {
    let cluster = TestCluster::start(1).await;
    let token = admin(&cluster).await.access_token;
    let client = cluster.client(0).token(&token);
    let pet_id = create_pet(&client, "Plain", "5.00", 1).await["id"]
        .as_i64()
        .unwrap();

    for text in [&b"this is text, not a picture"[..], b"", b"\x89PNG"] {
        let answer = upload(&client, pet_id, form(text, "cat.png", None)).await;
        assert_error(&answer, 415);
        assert!(
            answer.body["message"]
                .as_str()
                .unwrap()
                .contains("PNG, JPEG, WebP or GIF"),
            "{}",
            answer.text
        );
    }
    // Refused on its first bytes, a large body is still read, so that a client writing it
    // whole before reading gets the 415 and not a reset. (Larger than the sockets in
    // between hold.)
    let (status, body) = upload_then_read(
        cluster.node(0).addr(),
        &token,
        pet_id,
        &form(&vec![b'x'; 4 << 20], "cat.png", None),
    )
    .await;
    assert_eq!(status, 415, "{body}");
    assert_eq!(body["error"], "Unsupported Media Type", "{body}");

    let missing_file = client
        .send(
            client
                .request(Method::POST, &format!("/api/v1/pets/{pet_id}/uploadImage"))
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={BOUNDARY}"),
                )
                .body(format!("--{BOUNDARY}--\r\n")),
        )
        .await
        .unwrap();
    assert_error(&missing_file, 400);

    let pet = client.get(&format!("/api/v1/pets/{pet_id}")).await.unwrap();
    assert_eq!(pet.body["photoUrls"], serde_json::json!([]));
    assert_eq!(pet.body["version"], 1);
    let stored: i64 = sqlx::query_scalar("select count(*) from pet_image")
        .fetch_one(cluster.db())
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

/// Sends `body` as an upload to `addr` the way a client that reads only after sending does,
/// then reads the answer to the end of the connection (it asks for the close), which must be
/// clean (no reset).
async fn upload_then_read(
    addr: std::net::SocketAddr,
    token: &str,
    pet_id: i64,
    body: &[u8],
) -> (u16, Value) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /api/v1/pets/{pet_id}/uploadImage HTTP/1.1\r\nhost: test\r\nconnection: close\r\nauthorization: Bearer {token}\r\ncontent-type: multipart/form-data; boundary={BOUNDARY}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream
            .write_all(body)
            .await
            .expect("the whole body is written");
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .expect("the answer is read to a clean end");
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text[9..12].parse().unwrap();
        let (_, json) = text.split_once("\r\n\r\n").unwrap();
        (
            status,
            serde_json::from_str(json).unwrap_or_else(|_| Value::String(text.clone())),
        )
    };
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .expect("a complete exchange")
}

#[tokio::test]
async fn an_image_over_the_limit_gets_a_413_that_a_client_writing_everything_first_reads() {
    const LIMIT: usize = 64 * 1024;
    let cluster = TestCluster::builder()
        .nodes(1)
        .env("PETMESH_NODE__PETS__MAX_IMAGE_BYTES", LIMIT.to_string())
        .start()
        .await;
    let token = admin(&cluster).await.access_token;
    let client = cluster.client(0).token(&token);
    let pet_id = create_pet(&client, "Big", "5.00", 1).await["id"]
        .as_i64()
        .unwrap();

    // Exactly the limit is accepted.
    upload(&client, pet_id, form(&png(LIMIT), "big.png", None))
        .await
        .assert_status(200);
    // One byte more is refused by the upload itself, naming the setting.
    let answer = upload(&client, pet_id, form(&png(LIMIT + 1), "big.png", None)).await;
    assert_error(&answer, 413);
    let message = answer.body["message"].as_str().unwrap();
    assert!(
        message.contains(&LIMIT.to_string()) && message.contains("pets.max_image_bytes"),
        "{message}"
    );

    // Written whole before reading, both refusals are read: just over the image limit
    // (refused while reading the part), and far over it (refused by the body limit before
    // anything reads it; more than the sockets in between hold).
    for size in [LIMIT + 1, 8 << 20] {
        let (status, body) = upload_then_read(
            cluster.node(0).addr(),
            &token,
            pet_id,
            &form(&png(size), "big.png", None),
        )
        .await;
        assert_eq!(status, 413, "{size}: {body}");
        assert_eq!(body["statusCode"], 413, "{body}");
        assert_eq!(body["error"], "Payload Too Large", "{body}");
    }

    let pet = client.get(&format!("/api/v1/pets/{pet_id}")).await.unwrap();
    assert_eq!(pet.body["photoUrls"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn only_admins_upload_images_and_only_to_pets_that_exist() {
    let cluster = TestCluster::start(1).await;
    let token = admin(&cluster).await.access_token;
    let client = cluster.client(0);
    let pet_id = create_pet(&client.clone().token(&token), "Guarded", "5.00", 1).await["id"]
        .as_i64()
        .unwrap();
    let user = signed_up(&client, "shopper").await;

    let image = png(100);
    assert_error(
        &upload(
            &client.clone().token(&user.tokens.access_token),
            pet_id,
            form(&image, "a.png", None),
        )
        .await,
        403,
    );
    assert_error(
        &upload(
            &client.clone().anonymous(),
            pet_id,
            form(&image, "a.png", None),
        )
        .await,
        401,
    );
    assert_error(
        &upload(
            &client.clone().token(&token),
            pet_id + 1000,
            form(&image, "a.png", None),
        )
        .await,
        404,
    );
    let pet = client
        .clone()
        .token(&token)
        .get(&format!("/api/v1/pets/{pet_id}"))
        .await
        .unwrap();
    assert_eq!(pet.body["photoUrls"], serde_json::json!([]));
}

#[tokio::test]
async fn the_upload_is_documented_as_a_multipart_form_with_its_refusals() {
    let cluster = TestCluster::start(1).await;
    let spec = cluster.client(0).get("/openapi.json").await.unwrap();
    spec.assert_status(200);
    let upload = &spec.body["paths"]["/api/v1/pets/{id}/uploadImage"]["post"];
    let form = &upload["requestBody"]["content"]["multipart/form-data"]["schema"];
    let form = match form["$ref"].as_str() {
        Some(name) => &spec.body["components"]["schemas"][name.rsplit('/').next().unwrap()],
        None => form,
    };
    assert_eq!(form["properties"]["file"]["format"], "binary", "{form}");
    assert_eq!(
        form["properties"]["additionalMetadata"]["type"], "string",
        "{form}"
    );
    assert_eq!(form["required"], serde_json::json!(["file"]), "{form}");
    assert_eq!(form["additionalProperties"], false, "{form}");
    for status in ["200", "401", "403", "404", "413", "415"] {
        assert!(
            upload["responses"][status].is_object(),
            "{status}: {upload}"
        );
    }
    let image = &spec.body["paths"]["/api/v1/pets/{id}/images/{imageId}"]["get"];
    assert!(image["responses"]["304"].is_object(), "{image}");
    assert!(
        image["responses"]["200"]["headers"]["ETAG"].is_object()
            || image["responses"]["200"]["headers"]["ETag"].is_object(),
        "{image}"
    );
}
