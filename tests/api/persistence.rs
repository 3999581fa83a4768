//! Data survives a graceful stop and a restart on the same data directory.

use serde_json::Value;

use crate::helpers::{PASSWORD, builder, email};

#[tokio::test]
async fn users_sessions_and_balances_survive_a_restart() {
    let app = builder().env("EASY_WRITER_SIGNUP_BONUS", 30).spawn().await;
    let address = email("restart");
    let session = app.register(&address).await;
    let secret_file = app.data_dir().join("jwt_secret");
    let dir = app.stop().await;

    let app = builder()
        .data_dir(dir)
        .env("EASY_WRITER_SIGNUP_BONUS", 30)
        .spawn()
        .await;
    let me: Value = app
        .get_authed("/api/v1/auth/me", &session.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], address);
    assert_eq!(me["balance"], 30);
    assert_eq!(app.login(&address, PASSWORD).await.status(), 200);
    let refreshed = app
        .post_with_cookie("/api/v1/auth/refresh", Some(&session.refresh_cookie))
        .await;
    assert_eq!(refreshed.status(), 200);
    assert_eq!(app.balance_and_ledger_sum(&session.user_id), (30, 30));
    // JWT_SECRET was given, so nothing was generated.
    assert!(!secret_file.exists());
}

#[tokio::test]
async fn a_generated_jwt_secret_is_kept_across_restarts() {
    let app = builder().env("JWT_SECRET", "").spawn().await;
    let session = app.register(&email("secret")).await;
    let secret_file = app.data_dir().join("jwt_secret");
    assert!(secret_file.exists());
    let dir = app.stop().await;
    let app = builder().data_dir(dir).env("JWT_SECRET", "").spawn().await;
    assert_eq!(
        app.get_authed("/api/v1/auth/me", &session.access_token)
            .await
            .status(),
        200
    );
}
