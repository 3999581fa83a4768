//! Account pages (CONTRACT §4 "User"): profile, balance, transactions, password.

use serde_json::{Value, json};

use crate::helpers::{PASSWORD, email, expect_error, spawn_app};

#[tokio::test]
async fn profile_can_be_read_and_renamed() {
    let app = spawn_app().await;
    let user = app.register(&email("profile")).await;
    let profile: Value = app
        .get_authed("/api/v1/user/profile", &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(profile["email"], user.email);
    assert_eq!(profile["is_verified"], false);
    assert!(profile["updated_at"].is_string());
    assert!(profile.get("hashed_password").is_none());

    let put = |body: Value| {
        app.client
            .put(app.url("/api/v1/user/profile"))
            .bearer_auth(&user.access_token)
            .json(&body)
            .send()
    };
    let renamed: Value = put(json!({"name": "  Мария  "}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(renamed["name"], "Мария");
    expect_error(
        put(json!({"name": "я".repeat(101)})).await.unwrap(),
        422,
        "validation_error",
    )
    .await;
    let me: Value = app
        .get_authed("/api/v1/auth/me", &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["name"], "Мария");
}

#[tokio::test]
async fn balance_and_transactions_follow_the_ledger() {
    let app = spawn_app().await;
    let user = app.register(&email("ledger")).await;
    for amount in [100, -30, 5] {
        app.topup(&user.user_id, amount).await;
    }
    let balance: Value = app
        .get_authed("/api/v1/user/balance", &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        balance,
        json!({"balance": 75, "currency": "raits", "exchange_rate": 10, "pending_payments": 0})
    );

    let list: Value = app
        .get_authed("/api/v1/user/transactions?limit=2", &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    let amounts: Vec<i64> = list["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["amount"].as_i64().unwrap())
        .collect();
    assert_eq!(amounts, [5, -30], "newest first");
    assert_eq!(list["transactions"][0]["type"], "adjustment");
    for key in ["id", "description", "payment_id", "created_at"] {
        assert!(list["transactions"][0].get(key).is_some(), "{key}");
    }
    assert_eq!(
        list["pagination"],
        json!({"total": 3, "limit": 2, "offset": 0, "has_more": true})
    );
    let past: Value = app
        .get_authed("/api/v1/user/transactions?offset=3", &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(past["transactions"], json!([]));
    for query in ["limit=0", "limit=101", "offset=-5"] {
        let response = app
            .get_authed(
                &format!("/api/v1/user/transactions?{query}"),
                &user.access_token,
            )
            .await;
        let body = expect_error(response, 422, "validation_error").await;
        assert_eq!(body["detail"][0]["loc"][0], "query");
    }
}

#[tokio::test]
async fn changing_the_password_revokes_every_other_session() {
    let app = spawn_app().await;
    let address = email("password");
    let caller = app.register(&address).await;
    let other = app
        .session_from(&address, app.login(&address, PASSWORD).await)
        .await;

    let put = |body: Value| {
        app.client
            .put(app.url("/api/v1/user/password"))
            .bearer_auth(&caller.access_token)
            .json(&body)
            .send()
    };
    expect_error(
        put(json!({"current_password": "wrong one!", "new_password": "new password 1"}))
            .await
            .unwrap(),
        400,
        "invalid_current_password",
    )
    .await;
    expect_error(
        put(json!({"current_password": PASSWORD, "new_password": "short"}))
            .await
            .unwrap(),
        422,
        "validation_error",
    )
    .await;
    let done = put(json!({"current_password": PASSWORD, "new_password": "new password 1"}))
        .await
        .unwrap();
    assert_eq!(done.status(), 204);

    // The caller's session lives on; the other one is gone, access and refresh alike.
    assert_eq!(
        app.get_authed("/api/v1/auth/me", &caller.access_token)
            .await
            .status(),
        200
    );
    assert_eq!(
        app.post_with_cookie("/api/v1/auth/refresh", Some(&caller.refresh_cookie))
            .await
            .status(),
        200
    );
    expect_error(
        app.get_authed("/api/v1/auth/me", &other.access_token).await,
        401,
        "invalid_token",
    )
    .await;
    expect_error(
        app.post_with_cookie("/api/v1/auth/refresh", Some(&other.refresh_cookie))
            .await,
        401,
        "invalid_token",
    )
    .await;
    assert_eq!(app.login(&address, "new password 1").await.status(), 200);
    expect_error(
        app.login(&address, PASSWORD).await,
        401,
        "invalid_credentials",
    )
    .await;
}

#[tokio::test]
async fn a_user_without_a_password_cannot_set_one_this_way() {
    let app = spawn_app().await;
    let user = app.register(&email("oauth-only")).await;
    let conn = rusqlite::Connection::open(app.database_path()).unwrap();
    conn.execute(
        "update users set hashed_password = null, provider = 'google' where id = ?1",
        [&user.user_id],
    )
    .unwrap();
    let response = app
        .client
        .put(app.url("/api/v1/user/password"))
        .bearer_auth(&user.access_token)
        .json(&json!({"current_password": "anything at all", "new_password": "new password 1"}))
        .send()
        .await
        .unwrap();
    expect_error(response, 400, "password_not_set").await;
    expect_error(
        app.login(&user.email, PASSWORD).await,
        401,
        "invalid_credentials",
    )
    .await;
}
