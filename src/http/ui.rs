//! The dashboard: one page and its two assets, compiled into the binary so
//! that the binary is the whole deployment. It loads nothing else; the page
//! asks the API for everything, with the bearer token when one is set.

use actix_web::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, X_CONTENT_TYPE_OPTIONS};
use actix_web::{HttpResponse, web};

const INDEX: &str = include_str!("ui/index.html");
const APP: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

/// Everything comes from this origin; nothing runs inline.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
                      frame-ancestors 'none'";

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((CONTENT_SECURITY_POLICY, POLICY))
        .insert_header((X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// Registers `/` and `/ui/...`; none of them needs the token (the page asks for it).
pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(
            super::routes::get("/").route(
                super::routes::read().to(|| async { asset("text/html; charset=utf-8", INDEX) }),
            ),
        )
        .service(super::routes::get("/ui/app.js").route(
            super::routes::read().to(|| async { asset("text/javascript; charset=utf-8", APP) }),
        ))
        .service(
            super::routes::get("/ui/style.css").route(
                super::routes::read().to(|| async { asset("text/css; charset=utf-8", STYLE) }),
            ),
        );
}

/// Whether `path` is one of the dashboard's files.
pub fn is_asset(path: &str) -> bool {
    matches!(path, "/" | "/ui/app.js" | "/ui/style.css")
}
