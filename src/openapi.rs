//! The OpenAPI document's header and security schemes, and [`complete`], which adds to every
//! operation the answers the shared middleware and extractors give (CONTRACT §3) so that each
//! handler documents only its own. A client generated from the document, or a fuzzer checking
//! answers against it, then meets no status the document does not name.

use utoipa::OpenApi;
use utoipa::openapi::path::Operation;
use utoipa::openapi::{Ref, ResponseBuilder};

#[derive(OpenApi)]
#[openapi(
    info(title = "Easy Writer", description = "Self-hosted backend for an AI writing assistant."),
    modifiers(&SecuritySchemes),
    tags(
        (name = "auth", description = "Accounts and sign-in"),
        (name = "tools", description = "Tabs, tools and execution"),
        (name = "generation", description = "Generation history"),
        (name = "images", description = "Pictures: generate, upscale, list, files"),
        (name = "payments", description = "Top-ups and the providers' webhooks"),
        (name = "wordpress", description = "The WordPress plugin API (X-Access-Password)"),
        (name = "user", description = "Profile, balance, transactions, password"),
        (name = "system", description = "Health and metrics"),
    ),
    components(schemas(crate::error::ErrorBody))
)]
struct ApiDoc;

/// The document before the routes add their paths.
pub fn base() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc
}

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "access_password",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Access-Password"))),
        );
    }
}

/// Adds the shared answers an operation can get but does not document itself.
pub fn complete(doc: &mut utoipa::openapi::OpenApi) {
    for item in doc.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            complete_operation(operation);
        }
    }
}

fn complete_operation(operation: &mut Operation) {
    let schemes: Vec<String> = operation
        .security
        .iter()
        .flatten()
        .filter_map(|requirement| serde_json::to_value(requirement).ok())
        .filter_map(|value| value.as_object().cloned())
        .flat_map(|object| object.into_iter().map(|(name, _)| name))
        .collect();
    let has = |name: &str| schemes.iter().any(|scheme| scheme == name);
    if has("bearer") {
        add(
            operation,
            401,
            "`not_authenticated`, `token_expired` or `invalid_token` (with `WWW-Authenticate: Bearer`)",
        );
        add(operation, 403, "`inactive`: the account is deactivated");
    }
    if has("access_password") {
        add(
            operation,
            401,
            "`invalid_password`: missing or wrong `X-Access-Password`",
        );
        add(
            operation,
            429,
            "`too_many_attempts`: too many wrong passwords from this address, with `Retry-After`",
        );
    }
    let parameters = operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
    if let Some(body) = &operation.request_body {
        if body.content.contains_key("application/json") {
            add(
                operation,
                415,
                "`unsupported_media_type`: the body must be `application/json`",
            );
        }
        add(
            operation,
            413,
            "`payload_too_large`: the body is over 1 MiB",
        );
        add(operation, 422, "`validation_error`");
    } else if parameters {
        add(operation, 422, "`validation_error`");
    }
}

fn add(operation: &mut Operation, status: u16, description: &str) {
    let status = status.to_string();
    if operation.responses.responses.contains_key(&status) {
        return;
    }
    let response = ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            utoipa::openapi::ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build();
    operation
        .responses
        .responses
        .insert(status, response.into());
}

/// A schema listing the values the server accepts, for `#[schema(schema_with = …)]`: strings, or
/// integers.
pub fn one_of<V: Into<serde_json::Value>>(
    values: impl IntoIterator<Item = V>,
) -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let values: Vec<serde_json::Value> = values.into_iter().map(Into::into).collect();
    let kind = if values.iter().all(serde_json::Value::is_string) {
        Type::String
    } else {
        Type::Integer
    };
    ObjectBuilder::new()
        .schema_type(kind)
        .enum_values(Some(values))
        .build()
}

/// `schema` or `null`, for an optional body field described with [`one_of`].
pub fn or_null(mut schema: utoipa::openapi::Object) -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{SchemaType, Type};
    if let SchemaType::Type(kind) = schema.schema_type {
        schema.schema_type = SchemaType::from_iter([kind, Type::Null]);
    }
    if let Some(values) = schema.enum_values.as_mut() {
        values.push(serde_json::Value::Null);
    }
    schema
}

/// What this server's configuration fixes: the bounds of a top-up.
pub fn configure(doc: &mut utoipa::openapi::OpenApi, config: &crate::config::Config) {
    use utoipa::Number;
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::Schema;
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    let Some(RefOr::T(Schema::Object(request))) = components.schemas.get_mut("CreateRequest")
    else {
        return;
    };
    if let Some(RefOr::T(Schema::Object(amount))) = request.properties.get_mut("amount_rub") {
        amount.minimum = Some(Number::Int(config.payments.payment_min_rub as isize));
        amount.maximum = Some(Number::Int(config.payments.payment_max_rub as isize));
    }
}
