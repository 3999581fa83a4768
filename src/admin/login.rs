//! `/admin/login` and `/admin/logout`.

use axum::Form;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::CookieJar;
use minijinja::context;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::session::{self, Admin, COOKIE, LOGIN_COOKIE};
use super::{audit, view};
use crate::app::AppState;
use crate::request::ClientIp;

/// The sign-in form, with a fresh double-submit token.
pub async fn form(State(state): State<AppState>, jar: CookieJar) -> Response {
    show(&state, jar, None, StatusCode::OK)
}

fn show(state: &AppState, jar: CookieJar, message: Option<&str>, status: StatusCode) -> Response {
    let token = session::random_token();
    let jar = jar.add(session::cookie(
        LOGIN_COOKIE,
        token.clone(),
        state.auth.cookie.secure,
    ));
    let page = view::page_with(
        status,
        "login.html",
        context! { login_csrf => token, message => message },
    );
    (jar, page).into_response()
}

#[derive(Deserialize)]
pub struct Credentials {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

pub async fn submit(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    jar: CookieJar,
    Form(form): Form<Credentials>,
) -> Response {
    let expected = jar.get(LOGIN_COOKIE).map(|c| c.value().to_owned());
    let fresh = expected.is_some_and(|e| {
        !form.csrf.is_empty() && bool::from(e.as_bytes().ct_eq(form.csrf.as_bytes()))
    });
    if !fresh {
        return show(
            &state,
            jar,
            Some("Форма устарела, войдите ещё раз"),
            StatusCode::FORBIDDEN,
        );
    }
    let user = match crate::auth::routes::check_credentials(&state, &form.email, form.password, ip)
        .await
    {
        Ok(user) => user,
        Err(e) => {
            let message = match e.code() {
                "too_many_attempts" => "Слишком много попыток, попробуйте позже",
                "inactive" => "Учётная запись отключена",
                _ => "Неверный email или пароль",
            };
            return show(&state, jar, Some(message), e.status());
        }
    };
    if !user.is_admin {
        tracing::warn!(user.id = %user.id, "a non-admin tried the admin UI");
        return show(
            &state,
            jar,
            Some("Нет прав администратора"),
            StatusCode::FORBIDDEN,
        );
    }
    let user_id = user.id.clone();
    let started = state
        .db
        .write(move |tx| {
            let token = session::start(tx, &user_id)?;
            let admin = Admin {
                user,
                csrf: String::new(),
                token_sha256: session::digest(&token),
            };
            audit::record(tx, &admin, "sign_in", None, Some(&ip.to_string()))?;
            Ok::<_, crate::db::Error>(token)
        })
        .await;
    let Ok(token) = started else {
        return show(
            &state,
            jar,
            Some("Внутренняя ошибка"),
            StatusCode::INTERNAL_SERVER_ERROR,
        );
    };
    let secure = state.auth.cookie.secure;
    let jar = jar
        .remove(session::removal(LOGIN_COOKIE, secure))
        .add(session::cookie(COOKIE, token, secure));
    (jar, Redirect::to("/admin")).into_response()
}

pub async fn logout(
    State(state): State<AppState>,
    admin: Admin,
    jar: CookieJar,
    Form(form): Form<view::CsrfForm>,
) -> Response {
    if !admin.csrf_ok(&form.csrf) {
        return view::stale_form();
    }
    let hash = admin.token_sha256.clone();
    let _ = state
        .db
        .write(move |tx| {
            audit::record(tx, &admin, "sign_out", None, None)?;
            session::end(tx, &hash)
        })
        .await;
    let jar = jar.remove(session::removal(COOKIE, state.auth.cookie.secure));
    (jar, Redirect::to("/admin/login")).into_response()
}
