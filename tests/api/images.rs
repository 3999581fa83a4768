//! `/images` end to end against a fake FusionBrain: paid generation watched on
//! `/ws/image/{id}`, every format's delivered size, signed links, upscale, delete, owners,
//! refunds in every failure, the image tools through execute, and recovery after kill -9.

use std::time::Duration;

use serde_json::{Value, json};

use crate::fake_images::{Behaviour, FakeKandinsky, png_size};
use crate::fake_llm::{FakeLlm, Reply};
use crate::helpers::{
    ServerProcess, Session, TestApp, builder, email, expect_error, get_at, register_at,
};
use crate::jobs::Watcher;

const WEB_COST: i64 = 20;

/// A server whose only image provider is a fake Kandinsky; and a user holding `raits`.
async fn app_with_user(raits: i64) -> (TestApp, FakeKandinsky, Session) {
    let app = builder()
        .upstream("FUSIONBRAIN_BASE_URL")
        .env("FUSIONBRAIN_API_KEY", "fb-key")
        .env("FUSIONBRAIN_SECRET_KEY", "fb-secret")
        .env("FUSIONBRAIN_POLL_MS", 20)
        .env("FUSIONBRAIN_TIMEOUT_SECS", 5)
        .env("EASY_WRITER_RETRY_BASE_MS", 5)
        .spawn()
        .await;
    let fake = FakeKandinsky::mount(&app.upstreams["FUSIONBRAIN_BASE_URL"]).await;
    let user = app.register(&email("images")).await;
    if raits > 0 {
        app.topup(&user.user_id, raits).await;
    }
    (app, fake, user)
}

async fn generate(app: &TestApp, user: &Session, format: &str) -> reqwest::Response {
    app.post_authed(
        "/api/v1/images/generate",
        &user.access_token,
        &json!({"prompt": "рыжий кот на подоконнике", "format": format}),
    )
    .await
}

/// Generates and waits for the final event on `/ws/image/{id}`; returns the events and the
/// image as `GET /images/{id}` shows it.
async fn generate_and_watch(app: &TestApp, user: &Session, format: &str) -> (Vec<Value>, Value) {
    let response = generate(app, user, format).await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["status"], "processing");
    let id = accepted["id"].as_str().unwrap().to_owned();
    assert_eq!(accepted["ws_url"], format!("/ws/image/{id}"));
    let mut ws = Watcher::connect(
        app.addr,
        &format!("/ws/image/{id}"),
        Some(&user.access_token),
    )
    .await;
    let connected = ws.event().await;
    assert_eq!(connected, json!({"event": "connected", "image_id": id}));
    let events = ws.until_final().await;
    let image: Value = app
        .get_authed(&format!("/api/v1/images/{id}"), &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    (events, image)
}

/// Upscales image `id` and waits for the final event on `/ws/image/{id}`; returns the events
/// and the image as `GET /images/{id}` shows it then.
async fn upscale_and_watch(
    app: &TestApp,
    user: &Session,
    id: &str,
    scale: u32,
) -> (Vec<Value>, Value) {
    let path = format!("/api/v1/images/{id}/upscale");
    let response = app
        .post_authed(&path, &user.access_token, &json!({"scale": scale}))
        .await;
    assert_eq!(response.status(), 202);
    let mut ws = Watcher::connect(
        app.addr,
        &format!("/ws/image/{id}"),
        Some(&user.access_token),
    )
    .await;
    assert_eq!(ws.event().await["event"], "connected");
    let events = ws.until_final().await;
    let image = app
        .get_authed(&format!("/api/v1/images/{id}"), &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    (events, image)
}

async fn fetch(app: &TestApp, url: &str) -> reqwest::Response {
    app.client.get(url).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_picture_is_paid_drawn_watched_and_served_by_its_signed_link() {
    let (app, _fake, user) = app_with_user(100).await;
    let (events, image) = generate_and_watch(&app, &user, "web").await;
    let last = events.last().unwrap();
    assert_eq!(last["event"], "completed", "{events:?}");
    assert!(events.iter().any(|e| e["event"] == "processing"));
    let progress: Vec<u64> = events
        .iter()
        .filter_map(|e| e["progress"].as_u64())
        .collect();
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert_eq!(image["status"], "completed");
    assert_eq!(image["provider"], "kandinsky");
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(1024), Some(1024))
    );
    assert_eq!(image["cost_raits"], WEB_COST);
    let url = image["url"].as_str().unwrap();
    assert_eq!(
        last["url"].as_str().unwrap().split('?').next(),
        url.split('?').next()
    );
    // An <img> loads it without any header.
    let file = fetch(&app, url).await;
    assert_eq!(file.status(), 200);
    assert_eq!(file.headers()["content-type"], "image/png");
    assert!(file.headers().get("cache-control").is_some());
    assert_eq!(png_size(&file.bytes().await.unwrap()), (1024, 1024));
    assert_eq!(
        app.balance_and_ledger_sum(&user.user_id),
        (100 - WEB_COST, 100 - WEB_COST)
    );
    // The owner's token works too; a tampered link does not.
    let id = image["id"].as_str().unwrap();
    let authed = app
        .get_authed(&format!("/api/v1/images/{id}/file"), &user.access_token)
        .await;
    assert_eq!(authed.status(), 200);
    let tampered = url.replace("sig=", "sig=x");
    expect_error(fetch(&app, &tampered).await, 401, "invalid_token").await;
    let other = url.replace("variant=original", "variant=upscaled");
    expect_error(fetch(&app, &other).await, 401, "invalid_token").await;
    expect_error(
        fetch(&app, &app.url(&format!("/api/v1/images/{id}/file"))).await,
        401,
        "not_authenticated",
    )
    .await;
    let path = app
        .data_dir()
        .join(format!("uploads/images/{}/{id}.png", user.user_id));
    assert!(path.exists(), "{}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_is_delivered_at_its_exact_size() {
    let (app, _fake, user) = app_with_user(500).await;
    for (format, size, cost) in [
        ("messenger", (512, 512), 10),
        ("web", (1024, 1024), 20),
        ("banner", (2048, 1024), 30),
        ("print", (2048, 2048), 50),
    ] {
        let (events, image) = generate_and_watch(&app, &user, format).await;
        assert_eq!(
            events.last().unwrap()["event"],
            "completed",
            "{format}: {events:?}"
        );
        assert_eq!(image["cost_raits"], cost, "{format}");
        let file = fetch(&app, image["url"].as_str().unwrap()).await;
        assert_eq!(png_size(&file.bytes().await.unwrap()), size, "{format}");
        assert_eq!(
            (
                image["width"].as_u64().unwrap() as u32,
                image["height"].as_u64().unwrap() as u32
            ),
            size
        );
    }
    assert_eq!(app.balance_and_ledger_sum(&user.user_id), (390, 390));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn censored_failed_and_timed_out_pictures_are_refunded() {
    let (app, fake, user) = app_with_user(100).await;
    for (behaviour, code) in [
        (Behaviour::Censor, "content_refused"),
        (Behaviour::Fail, "providers_unavailable"),
    ] {
        fake.set(behaviour);
        let (events, image) = generate_and_watch(&app, &user, "web").await;
        let last = events.last().unwrap();
        assert_eq!(last["event"], "error", "{events:?}");
        assert_eq!(last["code"], code);
        assert_eq!(image["status"], "failed");
        assert_eq!(image["error"]["code"], code);
        assert!(image["url"].is_null());
        assert_eq!(app.balance_and_ledger_sum(&user.user_id), (100, 100));
    }
}

#[tokio::test]
async fn bad_input_short_balance_and_no_provider_change_nothing() {
    let (app, fake, user) = app_with_user(15).await;
    for body in [
        json!({"prompt": "", "format": "web"}),
        json!({"prompt": "x".repeat(1001), "format": "web"}),
        json!({"prompt": "кот", "format": "poster"}),
        json!({"prompt": "кот", "format": "web", "style": "CUBISM"}),
        json!({"format": "web"}),
    ] {
        let response = app
            .post_authed("/api/v1/images/generate", &user.access_token, &body)
            .await;
        expect_error(response, 422, "validation_error").await;
    }
    let short = expect_error(
        generate(&app, &user, "web").await,
        402,
        "insufficient_balance",
    )
    .await;
    assert_eq!(
        (short["required"].as_i64(), short["balance"].as_i64()),
        (Some(20), Some(15))
    );
    assert_eq!(fake.runs(), 0);
    assert_eq!(app.balance_and_ledger_sum(&user.user_id), (15, 15));

    let bare = builder().spawn().await;
    let someone = bare.register(&email("noimg")).await;
    bare.topup(&someone.user_id, 100).await;
    expect_error(
        generate(&bare, &someone, "web").await,
        503,
        "providers_unavailable",
    )
    .await;
    assert_eq!(bare.balance_and_ledger_sum(&someone.user_id), (100, 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_get_delete_and_another_users_images() {
    let (app, _fake, user) = app_with_user(100).await;
    let (_, first) = generate_and_watch(&app, &user, "messenger").await;
    let (_, second) = generate_and_watch(&app, &user, "messenger").await;
    let list: Value = app
        .get_authed("/api/v1/images?limit=1", &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["pagination"]["total"], 2);
    assert_eq!(list["pagination"]["has_more"], true);
    assert_eq!(list["images"][0]["id"], second["id"], "newest first");

    let stranger = app.register(&email("stranger")).await;
    let id = first["id"].as_str().unwrap();
    for path in [
        format!("/api/v1/images/{id}"),
        format!("/api/v1/images/{id}/file"),
    ] {
        expect_error(
            app.get_authed(&path, &stranger.access_token).await,
            404,
            "not_found",
        )
        .await;
    }
    let delete = app
        .client
        .delete(app.url(&format!("/api/v1/images/{id}")))
        .bearer_auth(&stranger.access_token)
        .send()
        .await
        .unwrap();
    expect_error(delete, 404, "not_found").await;
    let upscale = app
        .post_authed(
            &format!("/api/v1/images/{id}/upscale"),
            &stranger.access_token,
            &json!({"scale": 2}),
        )
        .await;
    expect_error(upscale, 404, "not_found").await;
    let mut ws = Watcher::connect(
        app.addr,
        &format!("/ws/image/{id}"),
        Some(&stranger.access_token),
    )
    .await;
    assert_eq!(ws.close_code().await, 4404);
    for bad in ["../../etc/passwd", "not-a-uuid", "%2e%2e%2fx"] {
        let response = app
            .get_authed(&format!("/api/v1/images/{bad}/file"), &user.access_token)
            .await;
        assert_eq!(response.status(), 404, "{bad}");
    }

    let file = app
        .data_dir()
        .join(format!("uploads/images/{}/{id}.png", user.user_id));
    assert!(file.exists());
    let deleted = app
        .client
        .delete(app.url(&format!("/api/v1/images/{id}")))
        .bearer_auth(&user.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert!(!file.exists(), "the file is removed");
    expect_error(
        app.get_authed(&format!("/api/v1/images/{id}"), &user.access_token)
            .await,
        404,
        "not_found",
    )
    .await;
    expect_error(
        fetch(&app, first["url"].as_str().unwrap()).await,
        404,
        "not_found",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upscaling_a_picture_is_paid_watched_and_refunded_when_it_fails() {
    let (app, _fake, user) = app_with_user(100).await;
    let (_, image) = generate_and_watch(&app, &user, "messenger").await;
    let id = image["id"].as_str().unwrap().to_owned();
    let (events, image) = upscale_and_watch(&app, &user, &id, 4).await;
    assert_eq!(events.last().unwrap()["event"], "completed", "{events:?}");
    assert_eq!(image["status"], "completed");
    let upscaled = fetch(&app, image["upscaled_url"].as_str().unwrap()).await;
    assert_eq!(png_size(&upscaled.bytes().await.unwrap()), (2048, 2048));
    let original = fetch(&app, image["url"].as_str().unwrap()).await;
    assert_eq!(png_size(&original.bytes().await.unwrap()), (512, 512));
    // messenger 10 + upscale 4× 20.
    assert_eq!(image["cost_raits"], 30);
    assert_eq!(app.balance_and_ledger_sum(&user.user_id), (70, 70));

    // A second upscale replaces the first, on disk too.
    let (events, image) = upscale_and_watch(&app, &user, &id, 2).await;
    assert_eq!(events.last().unwrap()["event"], "completed", "{events:?}");
    let upscaled = fetch(&app, image["upscaled_url"].as_str().unwrap()).await;
    assert_eq!(png_size(&upscaled.bytes().await.unwrap()), (1024, 1024));
    let dir = app
        .data_dir()
        .join(format!("uploads/images/{}", user.user_id));
    assert_eq!(
        std::fs::read_dir(dir).unwrap().count(),
        2,
        "the picture and one upscale"
    );
    assert_eq!(app.balance_and_ledger_sum(&user.user_id), (60, 60));

    for bad in [json!({"scale": 3}), json!({"scale": "2"}), json!({})] {
        let response = app
            .post_authed(
                &format!("/api/v1/images/{id}/upscale"),
                &user.access_token,
                &bad,
            )
            .await;
        expect_error(response, 422, "validation_error").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upscale_that_fails_costs_nothing_and_leaves_the_picture() {
    let (app, _fake, user) = app_with_user(100).await;
    let (_, image) = generate_and_watch(&app, &user, "web").await;
    let id = image["id"].as_str().unwrap();
    // The picture's file vanishes from disk (an operator cleaning up): the upscale fails.
    let file = app
        .data_dir()
        .join(format!("uploads/images/{}/{id}.png", user.user_id));
    std::fs::remove_file(&file).unwrap();
    let (events, image) = upscale_and_watch(&app, &user, id, 2).await;
    assert_eq!(events.last().unwrap()["event"], "error", "{events:?}");
    assert_eq!(
        image["status"], "completed",
        "the picture row itself is unchanged"
    );
    assert!(image["upscaled_url"].is_null());
    assert_eq!(app.balance_and_ledger_sum(&user.user_id), (80, 80));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_draws_and_charges_once() {
    let (app, fake, user) = app_with_user(100).await;
    let send = || {
        app.client
            .post(app.url("/api/v1/images/generate"))
            .bearer_auth(&user.access_token)
            .header("idempotency-key", "img-1")
            .json(&json!({"prompt": "кот", "format": "web"}))
            .send()
    };
    let first: Value = send().await.unwrap().json().await.unwrap();
    let again = send().await.unwrap();
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.runs(), 1);
    assert_eq!(app.balance_and_ledger_sum(&user.user_id), (80, 80));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_tools_run_through_execute_as_sessions() {
    let llm = FakeLlm::start().await;
    let app = builder()
        .upstream("FUSIONBRAIN_BASE_URL")
        .env("FUSIONBRAIN_API_KEY", "fb-key")
        .env("FUSIONBRAIN_SECRET_KEY", "fb-secret")
        .env("FUSIONBRAIN_POLL_MS", 20)
        .env("OPENAI_BASE_URL", &llm.url)
        .env("OPENAI_API_KEY", "sk-test")
        .env("EASY_WRITER_RETRY_BASE_MS", 5)
        .spawn()
        .await;
    FakeKandinsky::mount(&app.upstreams["FUSIONBRAIN_BASE_URL"]).await;
    let user = app.register(&email("tools")).await;
    app.topup(&user.user_id, 200).await;
    let run = |tool: &str, input: Value| {
        let (app, token, tool) = (&app, user.access_token.clone(), tool.to_owned());
        async move {
            let response = app
                .post_authed(
                    &format!("/api/v1/tools/{tool}/execute"),
                    &token,
                    &json!({"input": input}),
                )
                .await;
            assert_eq!(response.status(), 202, "{tool}");
            let accepted: Value = response.json().await.unwrap();
            let id = accepted["session_id"].as_str().unwrap().to_owned();
            assert_eq!(accepted["ws_url"], format!("/ws/generation/{id}"));
            let mut ws =
                Watcher::connect(app.addr, &format!("/ws/generation/{id}"), Some(&token)).await;
            assert_eq!(ws.event().await["event"], "connected");
            let events = ws.until_final().await;
            let last = events.last().unwrap().clone();
            assert_eq!(last["event"], "completed", "{tool}: {events:?}");
            last["result"].clone()
        }
    };

    llm.then(Reply::text(&["a red cat on a windowsill, no text"]));
    let picture = run(
        "image_generate",
        json!({"prompt": "рыжий кот", "format": "messenger"}),
    )
    .await;
    let file = fetch(&app, picture["url"].as_str().unwrap()).await;
    assert_eq!(png_size(&file.bytes().await.unwrap()), (512, 512));
    let image_id = picture["image_id"].as_str().unwrap().to_owned();
    let listed: Value = app
        .get_authed(&format!("/api/v1/images/{image_id}"), &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["format"], "messenger");

    let upscaled = run("image_upscale", json!({"image_id": image_id, "scale": 2})).await;
    let file = fetch(&app, upscaled["url"].as_str().unwrap()).await;
    assert_eq!(png_size(&file.bytes().await.unwrap()), (1024, 1024));

    llm.then(Reply::text(&["Дорогая Анна! С днём рождения."]))
        .then(Reply::text(&[
            "a birthday cake with candles, watercolour, no text, no letters",
        ]));
    let card = run(
        "greeting_card",
        json!({"occasion": "birthday", "recipient_name": "Анна"}),
    )
    .await;
    assert_eq!(card["text"], "Дорогая Анна! С днём рождения.");
    let file = fetch(&app, card["image_url"].as_str().unwrap()).await;
    assert_eq!(png_size(&file.bytes().await.unwrap()), (1024, 1024));
    // messenger 10 + upscale 2× 10 + card 40.
    assert_eq!(app.balance_and_ledger_sum(&user.user_id), (140, 140));
    // The history shows freshly signed links that load.
    let history: Value = app
        .get_authed(
            "/api/v1/generation/sessions?tool_id=greeting_card",
            &user.access_token,
        )
        .await
        .json()
        .await
        .unwrap();
    let link = history["sessions"][0]["result"]["image_url"]
        .as_str()
        .unwrap();
    assert_eq!(fetch(&app, link).await.status(), 200);

    let missing = app
        .post_authed(
            "/api/v1/tools/image_upscale/execute",
            &user.access_token,
            &json!({"input": {"image_id": uuid::Uuid::now_v7().to_string(), "scale": 2}}),
        )
        .await;
    expect_error(missing, 404, "not_found").await;
    assert_eq!(app.balance_and_ledger_sum(&user.user_id), (140, 140));
}

/// kill -9 while Kandinsky is still drawing; after the restart the picture is failed and
/// refunded, and its watchers hear so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_picture_cut_off_by_a_crash_is_refunded_after_restart() {
    let fusionbrain = wiremock::MockServer::start().await;
    let fake = FakeKandinsky::mount(&fusionbrain).await;
    fake.set(Behaviour::Never);
    let dir = tempfile::tempdir().unwrap();
    let uri = fusionbrain.uri();
    let env = [
        ("FUSIONBRAIN_BASE_URL", uri.as_str()),
        ("FUSIONBRAIN_API_KEY", "fb-key"),
        ("FUSIONBRAIN_SECRET_KEY", "fb-secret"),
        ("FUSIONBRAIN_POLL_MS", "20"),
        ("EASY_WRITER_SIGNUP_BONUS", "100"),
    ];
    let server = ServerProcess::start(dir.path(), &env).await;
    let addr = server.addr();
    let url = |path: &str| format!("http://{addr}{path}");
    let client = reqwest::Client::new();
    let token = register_at(addr).await;
    let accepted: Value = client
        .post(url("/api/v1/images/generate"))
        .bearer_auth(&token)
        .json(&json!({"prompt": "кот", "format": "web"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();
    for _ in 0..200 {
        if fake.runs() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();

    let server = ServerProcess::start_on(addr, dir.path(), &env).await;
    let image = get_at(addr, &format!("/api/v1/images/{id}"), &token).await;
    assert_eq!(image["status"], "failed");
    assert_eq!(image["error"]["code"], "interrupted");
    let me = get_at(addr, "/api/v1/auth/me", &token).await;
    assert_eq!(me["balance"], 100);
    let mut ws = Watcher::connect(addr, &format!("/ws/image/{id}"), Some(&token)).await;
    assert_eq!(ws.event().await["event"], "connected");
    let last = ws.event().await;
    assert_eq!(
        (last["event"].as_str(), last["code"].as_str()),
        (Some("error"), Some("interrupted"))
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_check_calls_the_image_providers_too() {
    let fusionbrain = wiremock::MockServer::start().await;
    FakeKandinsky::mount(&fusionbrain).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("empty.toml");
    std::fs::write(&config, "").unwrap();
    let uri = fusionbrain.uri();
    let out = tokio::task::spawn_blocking(move || {
        crate::helpers::binary()
            .args(["providers", "check"])
            .env("EASY_WRITER_CONFIG", &config)
            .env("EASY_WRITER_DATA_DIR", dir.path())
            .env("FUSIONBRAIN_BASE_URL", uri)
            .env("FUSIONBRAIN_API_KEY", "fb-key")
            .env("FUSIONBRAIN_SECRET_KEY", "fb-secret")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("kandinsky: ok"), "{stdout}");
}
