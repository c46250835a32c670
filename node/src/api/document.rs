//! The OpenAPI document as served at `/openapi.json` (and shown by Swagger UI): what
//! poem-openapi generates from the types, plus the few things it cannot express, added here and
//! nowhere else so that the served document stays the one description of the API:
//!
//! - response `links`: the create → read → change → delete flows of pets, orders, subscribers
//!   and accounts, with the `ETag` a change needs in `If-Match` (clients and fuzzers follow them);
//! - `LoginRequest` takes exactly one of `username` and `email` (a `oneOf`);
//! - a subscriber's `eventListener` is never a name the WebSocket protocol uses (a `not`);
//! - the image upload form has no parts besides `file` and `additionalMetadata`.
//!
//! The server enforces each of these rules itself (the login handler, the subscriber
//! validation); this module only says so in the document.

use serde_json::{json, Map, Value};

use crate::subscribers::{RESERVED_NAMES, RESERVED_PREFIXES};

/// One link: after `from` answered `status`, `to` can be called with `parameters` (runtime
/// expressions, OpenAPI 3.0 § 4.7.20.4).
struct Link {
    /// The operation whose response the link belongs to.
    from: &'static str,
    /// The response status it applies to.
    status: &'static str,
    /// The link's name in the response's `links`.
    name: &'static str,
    /// The operation to call.
    to: &'static str,
    /// Parameter name → runtime expression.
    parameters: &'static [(&'static str, &'static str)],
    /// Fields of the request body → runtime expression (the rest of the body is the caller's).
    body: &'static [(&'static str, &'static str)],
}

const PET_ID: (&str, &str) = ("id", "$response.body#/id");
const PET_ETAG: (&str, &str) = ("If-Match", "$response.header.ETag");
const SUBSCRIBER_ID: (&str, &str) = ("id", "$response.body#/subscriber/id");
const SUBSCRIBER_NAME: (&str, &str) = ("eventListener", "$response.body#/subscriber/eventListener");
const ID: (&str, &str) = ("id", "$response.body#/id");

/// Links from `from`'s `status` answer to each of `targets`.
const fn link(
    from: &'static str,
    status: &'static str,
    name: &'static str,
    to: &'static str,
    parameters: &'static [(&'static str, &'static str)],
) -> Link {
    Link {
        from,
        status,
        name,
        to,
        parameters,
        body: &[],
    }
}

/// Every link of the API. A cancelled order stays readable (`DELETE` cancels it), so nothing
/// links from a cancel or a deletion onwards.
const LINKS: &[Link] = &[
    // Pets: create → read, replace, patch, delete (each change with the ETag it is based on).
    link("createPet", "201", "GetPet", "getPet", &[PET_ID]),
    link(
        "createPet",
        "201",
        "ReplacePet",
        "replacePet",
        &[PET_ID, PET_ETAG],
    ),
    link(
        "createPet",
        "201",
        "PatchPet",
        "patchPet",
        &[PET_ID, PET_ETAG],
    ),
    link(
        "createPet",
        "201",
        "DeletePet",
        "deletePet",
        &[PET_ID, PET_ETAG],
    ),
    link(
        "getPet",
        "200",
        "ReplacePet",
        "replacePet",
        &[PET_ID, PET_ETAG],
    ),
    link("getPet", "200", "PatchPet", "patchPet", &[PET_ID, PET_ETAG]),
    link("createPet", "201", "UploadImage", "uploadFile", &[PET_ID]),
    link(
        "uploadFile",
        "200",
        "GetPetImage",
        "getPetImage",
        &[
            ("id", "$request.path.id"),
            ("imageId", "$response.body#/imageId"),
        ],
    ),
    link(
        "getPet",
        "200",
        "DeletePet",
        "deletePet",
        &[PET_ID, PET_ETAG],
    ),
    link("replacePet", "200", "GetPet", "getPet", &[PET_ID]),
    link(
        "replacePet",
        "200",
        "PatchPet",
        "patchPet",
        &[PET_ID, PET_ETAG],
    ),
    link(
        "replacePet",
        "200",
        "DeletePet",
        "deletePet",
        &[PET_ID, PET_ETAG],
    ),
    link("patchPet", "200", "GetPet", "getPet", &[PET_ID]),
    link(
        "patchPet",
        "200",
        "ReplacePet",
        "replacePet",
        &[PET_ID, PET_ETAG],
    ),
    link(
        "patchPet",
        "200",
        "DeletePet",
        "deletePet",
        &[PET_ID, PET_ETAG],
    ),
    // A new pet can be ordered: its id goes into the order's body.
    Link {
        body: &[("petId", "$response.body#/id")],
        ..link("createPet", "201", "OrderPet", "placeOrder", &[])
    },
    // Orders: place → read, deliver, cancel.
    link("placeOrder", "201", "GetOrder", "getOrder", &[ID]),
    link(
        "placeOrder",
        "201",
        "SetOrderStatus",
        "setOrderStatus",
        &[ID],
    ),
    link("placeOrder", "201", "CancelOrder", "cancelOrder", &[ID]),
    link("getOrder", "200", "SetOrderStatus", "setOrderStatus", &[ID]),
    link("getOrder", "200", "CancelOrder", "cancelOrder", &[ID]),
    link("setOrderStatus", "200", "GetOrder", "getOrder", &[ID]),
    // Subscribers: register (201) or replace by name (200) → read by id and by name, replace,
    // delete.
    link(
        "upsertSubscriber",
        "201",
        "GetSubscriber",
        "getSubscriber",
        &[SUBSCRIBER_ID],
    ),
    link(
        "upsertSubscriber",
        "201",
        "GetSubscriberByEventListener",
        "getSubscriberByEventListener",
        &[SUBSCRIBER_NAME],
    ),
    link(
        "upsertSubscriber",
        "201",
        "ReplaceSubscriber",
        "replaceSubscriber",
        &[SUBSCRIBER_ID],
    ),
    link(
        "upsertSubscriber",
        "201",
        "DeleteSubscriber",
        "deleteSubscriber",
        &[SUBSCRIBER_ID],
    ),
    link(
        "upsertSubscriber",
        "200",
        "GetSubscriber",
        "getSubscriber",
        &[SUBSCRIBER_ID],
    ),
    link(
        "upsertSubscriber",
        "200",
        "ReplaceSubscriber",
        "replaceSubscriber",
        &[SUBSCRIBER_ID],
    ),
    link(
        "upsertSubscriber",
        "200",
        "DeleteSubscriber",
        "deleteSubscriber",
        &[SUBSCRIBER_ID],
    ),
    link(
        "getSubscriber",
        "200",
        "ReplaceSubscriber",
        "replaceSubscriber",
        &[ID],
    ),
    link(
        "getSubscriber",
        "200",
        "DeleteSubscriber",
        "deleteSubscriber",
        &[ID],
    ),
    link(
        "replaceSubscriber",
        "200",
        "GetSubscriber",
        "getSubscriber",
        &[ID],
    ),
    link(
        "replaceSubscriber",
        "200",
        "DeleteSubscriber",
        "deleteSubscriber",
        &[ID],
    ),
    // Accounts: register → read, change, delete (the user themself or an admin).
    link("register", "201", "GetUser", "getUser", &[ID]),
    link("register", "201", "UpdateUser", "updateUser", &[ID]),
    link("register", "201", "DeleteUser", "deleteUser", &[ID]),
];

/// The served document: `generated` (poem-openapi's JSON) with the additions above.
///
/// Panics if the generated document lacks an operation or schema named here: that is a bug
/// the tests below catch, not something a request can cause.
pub fn document(generated: &str) -> Value {
    let mut doc: Value = serde_json::from_str(generated).expect("the generated spec is JSON");
    add_links(&mut doc);
    let schemas = &mut doc["components"]["schemas"];
    let login = schemas["LoginRequest"]
        .as_object_mut()
        .expect("LoginRequest is documented");
    // Each branch types its field without `nullable`: a `null` login name counts as absent,
    // so `{"username": null, "email": "…"}` is a login by email, as the server reads it.
    login.insert(
        "oneOf".into(),
        json!([
            {"required": ["username"], "properties": {"username": {"type": "string"}}},
            {"required": ["email"], "properties": {"email": {"type": "string"}}},
        ]),
    );
    schemas["SubscriberInput"]["properties"]["eventListener"]["not"] =
        json!({ "pattern": reserved_event_names_pattern() });
    // `ImageUpload` refuses other parts (their names need not even be valid header text).
    // poem-openapi puts a multipart form's schema inline in its request body.
    let form = &mut doc["paths"]["/api/v1/pets/{id}/uploadImage"]["post"]["requestBody"]["content"]
        ["multipart/form-data"]["schema"];
    if let Some(form) = form.as_object_mut() {
        form.insert("additionalProperties".into(), json!(false));
    }
    doc
}

/// A regular expression matching the event names the WebSocket protocol reserves (the rule of
/// `subscribers::validate_event_listener` and the table's check constraint).
pub fn reserved_event_names_pattern() -> String {
    let names: Vec<String> = RESERVED_NAMES.iter().map(|n| regex::escape(n)).collect();
    let prefixes: Vec<String> = RESERVED_PREFIXES.iter().map(|p| regex::escape(p)).collect();
    format!("^({})$|^({})", names.join("|"), prefixes.join("|"))
}

fn add_links(doc: &mut Value) {
    for link in LINKS {
        let parameters: Map<String, Value> = link
            .parameters
            .iter()
            .map(|(name, expression)| ((*name).to_owned(), json!(expression)))
            .collect();
        assert!(
            find_operation(doc, link.to).is_some(),
            "link {} names no operation {}",
            link.name,
            link.to
        );
        let response = find_operation(doc, link.from)
            .and_then(|op| op["responses"].get_mut(link.status))
            .unwrap_or_else(|| panic!("no {} answer of {} to link from", link.status, link.from));
        let mut definition = json!({ "operationId": link.to, "parameters": parameters });
        if !link.body.is_empty() {
            // A literal body whose values are runtime expressions, which tools that follow
            // links (schemathesis among them) evaluate and merge into the body they send.
            let body: Map<String, Value> = link
                .body
                .iter()
                .map(|(name, expression)| ((*name).to_owned(), json!(expression)))
                .collect();
            definition["requestBody"] = Value::Object(body);
        }
        response
            .as_object_mut()
            .expect("a response is an object")
            .entry("links")
            .or_insert_with(|| json!({}))[link.name] = definition;
    }
}

/// The operation with `operation_id`.
fn find_operation<'a>(doc: &'a mut Value, operation_id: &str) -> Option<&'a mut Value> {
    doc["paths"]
        .as_object_mut()?
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|ops| ops.values_mut())
        .find(|op| op["operationId"] == operation_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served() -> Value {
        document(&super::super::service().spec())
    }

    #[test]
    fn every_link_joins_two_documented_operations_with_their_parameters() {
        let doc = served();
        let mut targets = 0;
        for ops in doc["paths"].as_object().unwrap().values() {
            for op in ops.as_object().unwrap().values() {
                for response in op["responses"].as_object().unwrap().values() {
                    let Some(links) = response.get("links") else {
                        continue;
                    };
                    for link in links.as_object().unwrap().values() {
                        targets += 1;
                        let target = doc["paths"]
                            .as_object()
                            .unwrap()
                            .values()
                            .flat_map(|ops| ops.as_object().unwrap().values())
                            .find(|op| op["operationId"] == link["operationId"])
                            .expect("the target exists");
                        let names: Vec<&str> = target["parameters"]
                            .as_array()
                            .map(|ps| ps.iter().map(|p| p["name"].as_str().unwrap()).collect())
                            .unwrap_or_default();
                        for parameter in link["parameters"].as_object().unwrap().keys() {
                            assert!(names.contains(&parameter.as_str()), "{link}");
                        }
                    }
                }
            }
        }
        assert_eq!(targets, LINKS.len());
    }

    #[test]
    fn every_operation_has_an_id() {
        let doc = served();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                assert!(op["operationId"].is_string(), "{method} {path}");
            }
        }
    }

    #[test]
    fn the_reserved_names_pattern_matches_what_validation_refuses() {
        let pattern = regex::Regex::new(&reserved_event_names_pattern()).unwrap();
        for name in [
            "ping",
            "subscribe",
            "unsubscribe",
            "auth:x",
            "room:1",
            "pets.list",
            "order:created",
        ] {
            assert!(pattern.is_match(name), "{name}");
            assert!(crate::subscribers::validate_event_listener(name).is_err());
        }
        for name in ["pings", "Ping", "chat:typing", "petsx", "pet", "orders-x"] {
            assert!(!pattern.is_match(name), "{name}");
            assert!(crate::subscribers::validate_event_listener(name).is_ok());
        }
    }
}
