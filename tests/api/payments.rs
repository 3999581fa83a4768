//! Top-ups through the four providers against fakes of their APIs, with notifications signed
//! as the providers sign them (CONTRACT §4 "Payments", `reference/payments.md`).

use std::collections::HashMap;

use serde_json::{Value, json};
use wiremock::MockServer;

use crate::fake_payments::{self as fake, Shared};
use crate::helpers::{Session, TestApp, builder, email, expect_error, spawn_app};

const FRONTEND: &str = "https://app.example.com";

struct Shop {
    app: TestApp,
    yookassa: Shared,
    tbank: Shared,
    cloudpayments: Shared,
}

async fn shop_with(extra: &[(&str, &str)]) -> Shop {
    let mut b = builder()
        .upstream("YOOKASSA_BASE_URL")
        .upstream("TBANK_BASE_URL")
        .upstream("CLOUDPAYMENTS_BASE_URL")
        .env("FRONTEND_URL", FRONTEND);
    for (k, v) in fake::env().into_iter().chain(extra.iter().copied()) {
        b = b.env(k, v);
    }
    let app = b.spawn().await;
    Shop {
        yookassa: fake::yookassa(&app.upstreams["YOOKASSA_BASE_URL"]).await,
        tbank: fake::tbank(&app.upstreams["TBANK_BASE_URL"]).await,
        cloudpayments: fake::cloudpayments(&app.upstreams["CLOUDPAYMENTS_BASE_URL"]).await,
        app,
    }
}

async fn shop() -> Shop {
    shop_with(&[]).await
}

async fn create(
    app: &TestApp,
    user: &Session,
    provider: &str,
    amount_rub: i64,
    key: Option<&str>,
) -> reqwest::Response {
    let body = json!({"amount_rub": amount_rub, "provider": provider});
    create_with(app, user, &body, key).await
}

/// `POST /payments/create` with any JSON body.
async fn create_with(
    app: &TestApp,
    user: &Session,
    body: &Value,
    key: Option<&str>,
) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/api/v1/payments/create"))
        .bearer_auth(&user.access_token)
        .json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await.unwrap()
}

async fn created(app: &TestApp, user: &Session, provider: &str, amount_rub: i64) -> Value {
    let response = create(app, user, provider, amount_rub, None).await;
    assert_eq!(response.status(), 201, "create via {provider}");
    response.json().await.unwrap()
}

async fn balance(app: &TestApp, user: &Session) -> Value {
    app.get_authed("/api/v1/user/balance", &user.access_token)
        .await
        .json()
        .await
        .unwrap()
}

async fn status_of(app: &TestApp, user: &Session, payment_id: &str) -> Value {
    let response = app
        .get_authed(
            &format!("/api/v1/payments/{payment_id}/status"),
            &user.access_token,
        )
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// POSTs a webhook body with a content type and extra headers; returns status and body text.
async fn deliver(
    app: &TestApp,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, String)],
) -> (u16, String) {
    let mut request = app
        .client
        .post(app.url(&format!("/api/v1/payments/webhook/{path}")))
        .header("content-type", content_type)
        .body(body);
    for (k, v) in headers {
        request = request.header(*k, v);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn deliver_json(app: &TestApp, path: &str, body: &Value) -> (u16, String) {
    deliver(app, path, "application/json", body.to_string(), &[]).await
}

/// The last request a fake received on `path`.
async fn last_request(server: &MockServer, path: &str) -> wiremock::Request {
    server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .rev()
        .find(|r| r.url.path() == path)
        .unwrap_or_else(|| panic!("no request to {path}"))
}

fn topups(app: &TestApp, user_id: &str) -> Vec<(i64, String)> {
    let conn = rusqlite::Connection::open(app.database_path()).unwrap();
    let mut stmt = conn
        .prepare("select amount, reference from transactions where user_id = ?1 and type = 'topup'")
        .unwrap();
    stmt.query_map([user_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn assert_ledger_holds(app: &TestApp, user: &Session) {
    let (balance, sum) = app.balance_and_ledger_sum(&user.user_id);
    assert_eq!(balance, sum, "balance equals the ledger sum");
}

#[tokio::test]
async fn methods_say_what_this_server_can_take() {
    let app = spawn_app().await;
    let body: Value = app
        .client
        .get(app.url("/api/v1/payments/methods"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let methods = body["methods"].as_array().unwrap();
    let slugs: Vec<&str> = methods
        .iter()
        .map(|m| m["provider"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, ["yookassa", "robokassa", "cloudpayments", "tbank"]);
    assert!(methods.iter().all(|m| m["enabled"] == false
        && m["min_amount_rub"] == 100
        && m["max_amount_rub"] == 100_000
        && m["name"].is_string()));

    let shop = shop_with(&[("EASY_WRITER_PAYMENT_MIN_RUB", "50")]).await;
    let body: Value = shop
        .app
        .client
        .get(shop.app.url("/api/v1/payments/methods"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        body["methods"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["enabled"] == true && m["min_amount_rub"] == 50)
    );
}

/// JSON Schema counts `500.0` an integer, so a client generated from the document may send it.
#[tokio::test]
async fn a_whole_amount_written_with_a_fraction_part_is_taken() {
    let shop = shop().await;
    let app = &shop.app;
    let user = app.register(&email("pay-float")).await;
    let body = json!({"amount_rub": 500.0, "provider": "tbank"});
    let response = create_with(app, &user, &body, None).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["amount_rub"], 500);
}

#[tokio::test]
async fn create_refuses_what_it_cannot_take_and_records_nothing() {
    let app = builder()
        .env("TBANK_TERMINAL_KEY", fake::TB_TERMINAL)
        .env("TBANK_PASSWORD", fake::TB_PASSWORD)
        .spawn()
        .await;
    let user = app.register(&email("pay-bad")).await;
    for amount in [99, 100_001, 0, -5] {
        expect_error(
            create(&app, &user, "tbank", amount, None).await,
            422,
            "validation_error",
        )
        .await;
    }
    for provider in ["robokassa", "paypal", ""] {
        expect_error(
            create(&app, &user, provider, 500, None).await,
            400,
            "provider_not_available",
        )
        .await;
    }
    for body in [
        json!({"amount_rub": 100.5, "provider": "tbank"}),
        json!({"amount_rub": "500", "provider": "tbank"}),
        json!([500, "tbank"]),
    ] {
        let refused = create_with(&app, &user, &body, None).await;
        expect_error(refused, 422, "validation_error").await;
    }
    let form = app
        .client
        .post(app.url("/api/v1/payments/create"))
        .bearer_auth(&user.access_token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("amount_rub=500&provider=tbank")
        .send()
        .await
        .unwrap();
    expect_error(form, 415, "unsupported_media_type").await;
    let anonymous = app
        .post_json(
            "/api/v1/payments/create",
            &json!({"amount_rub": 500, "provider": "tbank"}),
        )
        .await;
    expect_error(anonymous, 401, "not_authenticated").await;
    let conn = rusqlite::Connection::open(app.database_path()).unwrap();
    let rows: i64 = conn
        .query_row("select count(*) from payments", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn yookassa_top_up_is_credited_once_after_the_payment_is_re_fetched() {
    let shop = shop().await;
    let app = &shop.app;
    let user = app.register(&email("pay-yk")).await;
    let payment = created(app, &user, "yookassa", 150).await;
    let id = payment["payment_id"].as_str().unwrap();
    assert_eq!(payment["status"], "pending");
    assert_eq!(payment["provider"], "yookassa");
    assert_eq!(payment["amount_rub"], 150);
    assert_eq!(payment["amount_raits"], 1500);
    assert!(
        payment["payment_url"]
            .as_str()
            .unwrap()
            .starts_with("https://yoomoney.ru/checkout/")
    );

    // The create request, as YooKassa documents it.
    let request = last_request(&app.upstreams["YOOKASSA_BASE_URL"], "/payments").await;
    assert_eq!(
        request.headers["authorization"],
        "Basic MTIzNDU2OnRlc3RfU2VjcmV0S2V5X1hZWg=="
    );
    assert_eq!(request.headers["idempotence-key"], id);
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(
        body["amount"],
        json!({"value": "150.00", "currency": "RUB"})
    );
    assert_eq!(body["capture"], true);
    assert_eq!(body["confirmation"]["type"], "redirect");
    assert_eq!(
        body["confirmation"]["return_url"],
        format!("{FRONTEND}/payments/return?payment_id={id}")
    );
    assert_eq!(body["metadata"]["payment_id"], id);
    assert!(
        body.get("receipt").is_none(),
        "no receipt unless receipts are on"
    );
    assert!(body["description"].as_str().unwrap().chars().count() <= 128);
    assert_eq!(balance(app, &user).await["pending_payments"], 1);

    let yk_id = fake::only_id(&shop.yookassa);
    let notification = |event: &str| {
        json!({"type": "notification", "event": event,
               "object": {"id": yk_id, "status": "succeeded", "paid": true,
                          "amount": {"value": "150.00", "currency": "RUB"},
                          "metadata": {"payment_id": id}}})
    };
    // A notification is only a hint: YooKassa still says pending, so nothing is credited.
    let (code, _) = deliver_json(app, "yookassa", &notification("payment.succeeded")).await;
    assert_eq!(code, 200);
    assert_eq!(balance(app, &user).await["balance"], 0);

    fake::update(
        &shop.yookassa,
        &yk_id,
        json!({"status": "succeeded", "paid": true}),
    );
    let (code, _) = deliver_json(app, "yookassa", &notification("payment.succeeded")).await;
    assert_eq!(code, 200);
    let after = balance(app, &user).await;
    assert_eq!(after["balance"], 1500);
    assert_eq!(after["pending_payments"], 0);
    let status = status_of(app, &user, id).await;
    assert_eq!(status["status"], "completed");
    assert!(status["completed_at"].is_string());

    // Replayed five times in a row and five at once: still one credit.
    for _ in 0..5 {
        assert_eq!(
            deliver_json(app, "yookassa", &notification("payment.succeeded"))
                .await
                .0,
            200
        );
    }
    let succeeded = notification("payment.succeeded");
    let replays = (0..5).map(|_| deliver_json(app, "yookassa", &succeeded));
    for (code, _) in futures_util::future::join_all(replays).await {
        assert_eq!(code, 200);
    }
    assert_eq!(balance(app, &user).await["balance"], 1500);
    assert_eq!(
        topups(app, &user.user_id),
        vec![(1500, format!("yookassa:{yk_id}"))]
    );

    // Forged: a payment YooKassa does not know; garbage; nothing changes.
    let mut forged = notification("payment.succeeded");
    forged["object"]["id"] = json!("2f0c9999-000f-5000-8000-1d0a4b1c9999");
    expect_error(
        app.post_json("/api/v1/payments/webhook/yookassa", &forged)
            .await,
        401,
        "invalid_notification",
    )
    .await;
    let asked: Vec<String> = app.upstreams["YOOKASSA_BASE_URL"]
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.url.path().to_owned())
        .collect();
    assert!(
        !asked.iter().any(|p| p.contains("9999")),
        "an id we never opened is not looked up at YooKassa: {asked:?}"
    );
    let (code, _) = deliver(app, "yookassa", "application/json", "{not json", &[]).await;
    assert_eq!(code, 400);
    let mut sneaky = notification("payment.succeeded");
    sneaky["object"]["id"] = json!("../refunds/x");
    assert_eq!(deliver_json(app, "yookassa", &sneaky).await.0, 400);
    assert_eq!(balance(app, &user).await["balance"], 1500);

    // A second payment that YooKassa reports with another amount is not credited.
    let second = created(app, &user, "yookassa", 200).await;
    let second_yk = shop
        .yookassa
        .lock()
        .unwrap()
        .payments
        .iter()
        .find(|(_, p)| p["metadata"]["payment_id"] == second["payment_id"])
        .map(|(k, _)| k.clone())
        .unwrap();
    fake::update(
        &shop.yookassa,
        &second_yk,
        json!({"status": "succeeded", "paid": true, "amount": {"value": "2.00", "currency": "RUB"}}),
    );
    let mut cheap = notification("payment.succeeded");
    cheap["object"]["id"] = json!(second_yk);
    assert_eq!(deliver_json(app, "yookassa", &cheap).await.0, 401);
    assert_eq!(balance(app, &user).await["balance"], 1500);
    assert_ledger_holds(app, &user);
}

/// Robokassa's ResultURL form, signed with Password #2 and `Shp_payment_id`.
fn robokassa_result(out_sum: &str, inv_id: &str, payment_id: &str, password: &str) -> String {
    let shp = format!("Shp_payment_id={payment_id}");
    let signature = fake::robokassa_md5(&[out_sum, inv_id, password, &shp]);
    serde_urlencoded::to_string([
        ("OutSum", out_sum),
        ("InvId", inv_id),
        ("Fee", "3.90"),
        ("EMail", "payer@example.com"),
        ("SignatureValue", &signature.to_uppercase()),
        ("PaymentMethod", "BankCard"),
        ("Shp_payment_id", payment_id),
    ])
    .unwrap()
}

#[tokio::test]
async fn robokassa_link_is_signed_and_its_result_url_credits_once() {
    let shop = shop().await;
    let app = &shop.app;
    let user = app.register(&email("pay-rk")).await;
    let payment = created(app, &user, "robokassa", 100).await;
    let id = payment["payment_id"].as_str().unwrap();
    let url = reqwest::Url::parse(payment["payment_url"].as_str().unwrap()).unwrap();
    assert_eq!(url.host_str(), Some("auth.robokassa.ru"));
    let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(q["MerchantLogin"], fake::RK_LOGIN);
    assert_eq!(q["OutSum"], "100.00");
    assert_eq!(q["Shp_payment_id"], id);
    assert!(!q.contains_key("IsTest"), "live mode");
    assert!(!q.contains_key("Receipt"));
    let inv_id = q["InvId"].clone();
    assert!(inv_id.parse::<i64>().unwrap() >= 1);
    let expected = fake::robokassa_md5(&[
        fake::RK_LOGIN,
        "100.00",
        &inv_id,
        fake::RK_PASS1,
        &format!("Shp_payment_id={id}"),
    ]);
    assert_eq!(q["SignatureValue"].to_lowercase(), expected);

    let form = "application/x-www-form-urlencoded";
    // Forged (Password #1 instead of #2), a mismatched amount signed correctly, an unknown
    // invoice signed correctly: each refused, nothing credited.
    for body in [
        robokassa_result("100.00", &inv_id, id, fake::RK_PASS1),
        robokassa_result("1.00", &inv_id, id, fake::RK_PASS2),
        robokassa_result("100.00", "999999", id, fake::RK_PASS2),
        // Signed right, but the number was given to another payment (a restored backup).
        robokassa_result(
            "100.00",
            &inv_id,
            "01890000-0000-7000-8000-000000000000",
            fake::RK_PASS2,
        ),
    ] {
        let (code, _) = deliver(app, "robokassa", form, body, &[]).await;
        assert_eq!(code, 401);
    }
    assert_eq!(deliver(app, "robokassa", form, "garbage", &[]).await.0, 400);
    assert_eq!(balance(app, &user).await["balance"], 0);

    // OutSum as Robokassa formats it (6 decimals) is signed verbatim.
    let good = robokassa_result("100.000000", &inv_id, id, fake::RK_PASS2);
    let (code, text) = deliver(app, "robokassa", form, good.clone(), &[]).await;
    assert_eq!((code, text.as_str()), (200, format!("OK{inv_id}").as_str()));
    assert_eq!(balance(app, &user).await["balance"], 1000);
    // The same by GET, and concurrently: answered OK, credited once.
    let get = app
        .client
        .get(app.url(&format!("/api/v1/payments/webhook/robokassa?{good}")))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    assert_eq!(get.text().await.unwrap(), format!("OK{inv_id}"));
    let replays = (0..5).map(|_| deliver(app, "robokassa", form, good.clone(), &[]));
    for (code, _) in futures_util::future::join_all(replays).await {
        assert_eq!(code, 200);
    }
    assert_eq!(balance(app, &user).await["balance"], 1000);
    assert_eq!(
        topups(app, &user.user_id),
        vec![(1000, format!("robokassa:{inv_id}"))]
    );
    assert_eq!(status_of(app, &user, id).await["status"], "completed");
    assert_ledger_holds(app, &user);
}

#[tokio::test]
async fn cloudpayments_order_link_check_and_pay() {
    let shop = shop().await;
    let app = &shop.app;
    let user = app.register(&email("pay-cp")).await;
    let payment = created(app, &user, "cloudpayments", 200).await;
    let id = payment["payment_id"].as_str().unwrap();
    assert!(
        payment["payment_url"]
            .as_str()
            .unwrap()
            .starts_with("https://orders.cloudpayments.ru/d/")
    );
    let widget = &payment["widget"];
    assert_eq!(widget["publicId"], fake::CP_PUBLIC);
    assert_eq!(widget["invoiceId"], id);
    assert_eq!(widget["accountId"], user.user_id.as_str());

    let request = last_request(&app.upstreams["CLOUDPAYMENTS_BASE_URL"], "/orders/create").await;
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{}:{}", fake::CP_PUBLIC, fake::CP_SECRET),
    );
    assert_eq!(
        request.headers["authorization"],
        format!("Basic {basic}").as_str()
    );
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["InvoiceId"], id);
    assert_eq!(body["AccountId"], user.user_id.as_str());
    assert_eq!(body["Currency"], "RUB");
    assert_eq!(body["Amount"].as_f64(), Some(200.0));
    assert_eq!(body["Email"], user.email.as_str());
    assert!(
        !String::from_utf8_lossy(&request.body).contains("CustomerReceipt"),
        "no receipt unless receipts are on"
    );

    let form = "application/x-www-form-urlencoded";
    let signed = |fields: &[(&str, &str)]| {
        let body = fake::cloudpayments_form(fields);
        let hmac = fake::cloudpayments_hmac(fake::CP_SECRET, body.as_bytes());
        (body, hmac)
    };
    let uid = user.user_id.as_str();
    let pay_fields = [
        ("TransactionId", "900001"),
        ("Amount", "200.00"),
        ("Currency", "RUB"),
        ("DateTime", "2026-11-27 10:00:00"),
        ("Status", "Completed"),
        ("OperationType", "Payment"),
        ("InvoiceId", id),
        ("AccountId", uid),
        ("TestMode", "0"),
        ("Token", "card-token-secret-77"),
    ];
    let code = |text: &str| serde_json::from_str::<Value>(text).unwrap()["code"].clone();

    // Check: a wrong amount is 12, an unknown invoice 10, a right one 0.
    let (body, hmac) = signed(&[
        ("Amount", "1.00"),
        ("Currency", "RUB"),
        ("InvoiceId", id),
        ("AccountId", uid),
    ]);
    let (_, text) = deliver(
        app,
        "cloudpayments/check",
        form,
        body,
        &[("Content-HMAC", hmac)],
    )
    .await;
    assert_eq!(code(&text), 12);
    let (body, hmac) = signed(&[
        ("Amount", "200.00"),
        ("Currency", "RUB"),
        ("InvoiceId", "01890000-0000-7000-8000-000000000000"),
        ("AccountId", uid),
    ]);
    let (_, text) = deliver(
        app,
        "cloudpayments/check",
        form,
        body,
        &[("Content-HMAC", hmac)],
    )
    .await;
    assert_eq!(code(&text), 10);
    let (body, hmac) = signed(&[
        ("Amount", "200.00"),
        ("Currency", "RUB"),
        ("InvoiceId", id),
        ("AccountId", uid),
    ]);
    let (status, text) = deliver(
        app,
        "cloudpayments/check",
        form,
        body,
        &[("Content-HMAC", hmac)],
    )
    .await;
    assert_eq!((status, code(&text)), (200, json!(0)));

    // Forged: a wrong HMAC, none at all, signed with another secret.
    let (body, _) = signed(&pay_fields);
    for headers in [
        vec![("Content-HMAC", "AAAA".to_owned())],
        vec![],
        vec![(
            "Content-HMAC",
            fake::cloudpayments_hmac("other", body.as_bytes()),
        )],
    ] {
        let (status, text) = deliver(app, "cloudpayments/pay", form, body.clone(), &headers).await;
        assert_eq!((status, code(&text)), (200, json!(13)));
    }
    assert_eq!(balance(app, &user).await["balance"], 0);

    // A payment notice for another amount, signed right, and garbage: refused.
    let mut cheap = pay_fields;
    cheap[1] = ("Amount", "2.00");
    let (body, hmac) = signed(&cheap);
    let (_, text) = deliver(
        app,
        "cloudpayments/pay",
        form,
        body,
        &[("Content-HMAC", hmac)],
    )
    .await;
    assert_eq!(code(&text), 12);
    let garbage = "\u{1}\u{2}not a form";
    let hmac = fake::cloudpayments_hmac(fake::CP_SECRET, garbage.as_bytes());
    let (status, text) = deliver(
        app,
        "cloudpayments/pay",
        form,
        garbage,
        &[("Content-HMAC", hmac)],
    )
    .await;
    assert_eq!((status, code(&text)), (200, json!(13)));
    assert_eq!(balance(app, &user).await["balance"], 0);

    // Paid, then replayed concurrently: credited once.
    let (body, hmac) = signed(&pay_fields);
    let signature = [("Content-HMAC", hmac)];
    let deliveries =
        (0..6).map(|_| deliver(app, "cloudpayments/pay", form, body.clone(), &signature));
    for (status, text) in futures_util::future::join_all(deliveries).await {
        assert_eq!((status, code(&text)), (200, json!(0)));
    }
    assert_eq!(balance(app, &user).await["balance"], 2000);
    assert_eq!(topups(app, &user.user_id).len(), 1);
    assert_eq!(status_of(app, &user, id).await["status"], "completed");

    // A declined attempt of another payment leaves it payable.
    let second = created(app, &user, "cloudpayments", 300).await;
    let second_id = second["payment_id"].as_str().unwrap();
    let (body, hmac) = signed(&[
        ("TransactionId", "900002"),
        ("Amount", "300.00"),
        ("Currency", "RUB"),
        ("InvoiceId", second_id),
        ("AccountId", uid),
        ("Reason", "InsufficientFunds"),
        ("ReasonCode", "5051"),
        ("Status", "Declined"),
        ("OperationType", "Payment"),
    ]);
    let (_, text) = deliver(
        app,
        "cloudpayments/fail",
        form,
        body,
        &[("Content-HMAC", hmac)],
    )
    .await;
    assert_eq!(code(&text), 0);
    assert_eq!(status_of(app, &user, second_id).await["status"], "pending");
    assert_ledger_holds(app, &user);
}

#[tokio::test]
async fn tbank_credits_on_confirmed_only_and_refuses_forgeries() {
    let shop = shop().await;
    let app = &shop.app;
    let user = app.register(&email("pay-tb")).await;
    let payment = created(app, &user, "tbank", 150).await;
    let id = payment["payment_id"].as_str().unwrap();
    let request = last_request(&app.upstreams["TBANK_BASE_URL"], "/Init").await;
    let init: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(init["Token"], fake::tbank_token(&init, fake::TB_PASSWORD));
    assert_eq!(init["TerminalKey"], fake::TB_TERMINAL);
    assert_eq!(init["Amount"], 15000);
    assert_eq!(init["OrderId"], id);
    assert_eq!(
        init["NotificationURL"],
        app.url("/api/v1/payments/webhook/tbank")
    );
    assert_eq!(
        init["SuccessURL"],
        format!("{FRONTEND}/payments/return?payment_id={id}")
    );
    assert!(init.get("Password").is_none(), "the password is never sent");
    assert!(init.get("Receipt").is_none());
    let tb_id = fake::only_id(&shop.tbank);

    // AUTHORIZED comes first and moves no money.
    let (code, text) = deliver_json(
        app,
        "tbank",
        &fake::tbank_notification(&shop.tbank, &tb_id, "AUTHORIZED", true),
    )
    .await;
    assert_eq!((code, text.as_str()), (200, "OK"));
    assert_eq!(balance(app, &user).await["balance"], 0);

    let confirmed = fake::tbank_notification(&shop.tbank, &tb_id, "CONFIRMED", true);
    // Forged: the boolean rendered as `True`, a changed amount, a token signed with another
    // password, an unknown order signed right.
    let mut forged = confirmed.clone();
    forged["Amount"] = json!(1_500_000);
    assert_eq!(deliver_json(app, "tbank", &forged).await.0, 401);
    let mut resigned = forged.clone();
    resigned["Token"] = fake::tbank_token(&resigned, fake::TB_PASSWORD).into();
    assert_eq!(
        deliver_json(app, "tbank", &resigned).await.0,
        401,
        "amount mismatch"
    );
    let mut other = confirmed.clone();
    other["Token"] = fake::tbank_token(&other, "another-password").into();
    assert_eq!(deliver_json(app, "tbank", &other).await.0, 401);
    let mut unknown = confirmed.clone();
    unknown["OrderId"] = json!("01890000-0000-7000-8000-000000000000");
    unknown["Token"] = fake::tbank_token(&unknown, fake::TB_PASSWORD).into();
    assert_eq!(deliver_json(app, "tbank", &unknown).await.0, 401);
    assert_eq!(
        deliver(app, "tbank", "application/json", "\u{0}\u{1}garbage", &[])
            .await
            .0,
        400
    );
    assert_eq!(
        deliver(app, "tbank", "application/json", "", &[]).await.0,
        400
    );
    assert_eq!(balance(app, &user).await["balance"], 0);

    let deliveries = (0..5).map(|_| deliver_json(app, "tbank", &confirmed));
    for (code, text) in futures_util::future::join_all(deliveries).await {
        assert_eq!((code, text.as_str()), (200, "OK"));
    }
    assert_eq!(balance(app, &user).await["balance"], 1500);
    assert_eq!(
        topups(app, &user.user_id),
        vec![(1500, format!("tbank:{tb_id}"))]
    );

    // A rejected payment is failed, and stays so (and uncredited) on replays.
    let rejected = created(app, &user, "tbank", 300).await;
    let rejected_tb = shop
        .tbank
        .lock()
        .unwrap()
        .payments
        .iter()
        .find(|(_, p)| p["OrderId"] == rejected["payment_id"])
        .map(|(k, _)| k.clone())
        .unwrap();
    let notice = fake::tbank_notification(&shop.tbank, &rejected_tb, "REJECTED", false);
    assert_eq!(
        deliver_json(app, "tbank", &notice).await,
        (200, "OK".to_owned())
    );
    assert_eq!(
        status_of(app, &user, rejected["payment_id"].as_str().unwrap()).await["status"],
        "failed"
    );
    assert_eq!(balance(app, &user).await["balance"], 1500);
    assert_ledger_holds(app, &user);
}

#[tokio::test]
async fn receipts_ride_with_every_create_when_they_are_on() {
    let shop = shop_with(&[
        ("EASY_WRITER_RECEIPTS", "on"),
        ("EASY_WRITER_RECEIPT_VAT", "vat22"),
        ("EASY_WRITER_RECEIPT_TAXATION", "usn_income"),
    ])
    .await;
    let app = &shop.app;
    let user = app.register(&email("pay-receipt")).await;

    created(app, &user, "yookassa", 100).await;
    let yk: Value = serde_json::from_slice(
        &last_request(&app.upstreams["YOOKASSA_BASE_URL"], "/payments")
            .await
            .body,
    )
    .unwrap();
    let receipt = &yk["receipt"];
    assert_eq!(receipt["customer"]["email"], user.email.as_str());
    let item = &receipt["items"][0];
    assert_eq!(item["vat_code"], 11, "22 % is code 11 since 2026");
    assert_eq!(
        item["amount"],
        json!({"value": "100.00", "currency": "RUB"})
    );
    assert_eq!(item["description"], "Пополнение баланса Easy Writer");

    created(app, &user, "tbank", 100).await;
    let tb: Value = serde_json::from_slice(
        &last_request(&app.upstreams["TBANK_BASE_URL"], "/Init")
            .await
            .body,
    )
    .unwrap();
    let receipt = &tb["Receipt"];
    assert_eq!(receipt["Taxation"], "usn_income");
    assert_eq!(receipt["Email"], user.email.as_str());
    assert_eq!(receipt["Items"][0]["Tax"], "vat22");
    assert_eq!(receipt["Items"][0]["Amount"], 10_000);
    assert_eq!(
        tb["Token"],
        fake::tbank_token(&tb, fake::TB_PASSWORD),
        "receipts stay out of the token"
    );

    created(app, &user, "cloudpayments", 100).await;
    let cp = String::from_utf8(
        last_request(&app.upstreams["CLOUDPAYMENTS_BASE_URL"], "/orders/create")
            .await
            .body,
    )
    .unwrap();
    assert!(
        cp.contains("CustomerReceipt") && cp.contains(&user.email),
        "{cp}"
    );

    let rk = created(app, &user, "robokassa", 100).await;
    let url = reqwest::Url::parse(rk["payment_url"].as_str().unwrap()).unwrap();
    let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
    // Signed in its URL-encoded form, so the link carries it encoded twice (as Robokassa's
    // own SDK builds it), and the signature covers the encoded text.
    let encoded = &q["Receipt"];
    let receipt: Value = serde_json::from_str(
        &percent_encoding::percent_decode_str(encoded)
            .decode_utf8()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(receipt["items"][0]["tax"], "vat22");
    assert_eq!(receipt["items"][0]["sum"].as_f64(), Some(100.0));
    assert_eq!(receipt["sno"], "usn_income");
    let signed = fake::robokassa_md5(&[
        fake::RK_LOGIN,
        "100.00",
        &q["InvId"],
        encoded,
        fake::RK_PASS1,
        &format!("Shp_payment_id={}", rk["payment_id"].as_str().unwrap()),
    ]);
    assert_eq!(q["SignatureValue"].to_lowercase(), signed);
}

#[tokio::test]
async fn a_provider_that_is_down_or_talks_nonsense_fails_the_payment_cleanly() {
    let shop = shop().await;
    let app = &shop.app;
    let user = app.register(&email("pay-down")).await;
    shop.yookassa.lock().unwrap().broken = Some((500, "{\"type\":\"error\"}".into()));
    let down = create(app, &user, "yookassa", 100, Some("key-down")).await;
    expect_error(down, 503, "payment_provider_unavailable").await;
    // Replayed under its key: the same answer, no second payment.
    let again = create(app, &user, "yookassa", 100, Some("key-down")).await;
    expect_error(again, 503, "payment_provider_unavailable").await;
    shop.yookassa.lock().unwrap().broken = Some((200, "<html>maintenance</html>".into()));
    expect_error(
        create(app, &user, "yookassa", 100, None).await,
        503,
        "payment_provider_unavailable",
    )
    .await;
    shop.tbank.lock().unwrap().broken = Some((
        200,
        r#"{"Success":false,"ErrorCode":"9999","Message":"Внутренняя ошибка"}"#.into(),
    ));
    expect_error(
        create(app, &user, "tbank", 100, None).await,
        503,
        "payment_provider_unavailable",
    )
    .await;
    // An answer beyond any real one (here 2 MiB of a valid-looking JSON string) is not read
    // to its end, let alone parsed.
    let huge = format!(r#"{{"Success":true,"Message":"{}"}}"#, "x".repeat(2 << 20));
    shop.tbank.lock().unwrap().broken = Some((200, huge));
    let refused = create(app, &user, "tbank", 100, None).await;
    let body = expect_error(refused, 503, "payment_provider_unavailable").await;
    assert!(body.to_string().len() < 1000, "the answer is not echoed");

    let conn = rusqlite::Connection::open(app.database_path()).unwrap();
    let statuses: Vec<String> = conn
        .prepare("select status from payments order by number")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(statuses, ["failed", "failed", "failed", "failed"]);
    let last_error: String = conn
        .query_row(
            "select error from payments order by number desc limit 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(last_error.contains("too large"), "{last_error}");
    let after = balance(app, &user).await;
    assert_eq!(
        (after["balance"].clone(), after["pending_payments"].clone()),
        (json!(0), json!(0))
    );
}

#[tokio::test]
async fn an_idempotency_key_opens_one_payment() {
    let shop = shop().await;
    let app = &shop.app;
    let user = app.register(&email("pay-key")).await;
    let first: Value = create(app, &user, "tbank", 500, Some("top-up-1"))
        .await
        .json()
        .await
        .unwrap();
    let second = create(app, &user, "tbank", 500, Some("top-up-1")).await;
    assert_eq!(second.status(), 201);
    let second: Value = second.json().await.unwrap();
    assert_eq!(first, second);
    expect_error(
        create(app, &user, "tbank", 700, Some("top-up-1")).await,
        409,
        "idempotency_conflict",
    )
    .await;
    assert_eq!(shop.tbank.lock().unwrap().payments.len(), 1, "one Init");
}

#[tokio::test]
async fn a_lost_notification_is_reconciled_by_asking_the_provider() {
    let shop = shop().await;
    let app = &shop.app;
    let user = app.register(&email("pay-lost")).await;

    // YooKassa: the owner's status request asks YooKassa.
    let yk = created(app, &user, "yookassa", 100).await;
    let yk_id = fake::only_id(&shop.yookassa);
    fake::update(
        &shop.yookassa,
        &yk_id,
        json!({"status": "succeeded", "paid": true}),
    );
    let status = status_of(app, &user, yk["payment_id"].as_str().unwrap()).await;
    assert_eq!(status["status"], "completed");
    assert_eq!(balance(app, &user).await["balance"], 1000);

    // CloudPayments: the same through payments/find.
    let cp = created(app, &user, "cloudpayments", 200).await;
    let cp_id = cp["payment_id"].as_str().unwrap();
    fake::update(
        &shop.cloudpayments,
        cp_id,
        json!({"Status": "Completed", "Amount": 200.0}),
    );
    assert_eq!(status_of(app, &user, cp_id).await["status"], "completed");
    assert_eq!(balance(app, &user).await["balance"], 3000);

    // T-Bank: nobody asks; the timer does (its grace period passed: created 10 minutes ago).
    let tb = created(app, &user, "tbank", 100).await;
    let tb_payment = tb["payment_id"].as_str().unwrap().to_owned();
    let tb_id = fake::only_id(&shop.tbank);
    fake::update(&shop.tbank, &tb_id, json!({"Status": "CONFIRMED"}));
    let backdated = easy_writer::timestamp::format(
        time::OffsetDateTime::now_utc() - time::Duration::minutes(10),
    );
    app.state
        .db
        .write(move |tx| {
            tx.execute(
                "update payments set created_at = ?2 where id = ?1",
                [&tb_payment, &backdated],
            )
            .map_err(easy_writer::db::Error::from)
        })
        .await
        .unwrap();
    easy_writer::payments::reconcile::sweep(&app.state.db, &app.state.payments)
        .await
        .unwrap();
    assert_eq!(balance(app, &user).await["balance"], 4000);
    assert_eq!(topups(app, &user.user_id).len(), 3);
    // A notification that arrives after all credits nothing more.
    let late = fake::tbank_notification(&shop.tbank, &tb_id, "CONFIRMED", true);
    assert_eq!(
        deliver_json(app, "tbank", &late).await,
        (200, "OK".to_owned())
    );
    assert_eq!(balance(app, &user).await["balance"], 4000);
    assert_ledger_holds(app, &user);
}

#[tokio::test]
async fn a_provider_refund_takes_back_what_is_left_and_flags_the_rest() {
    let shop = shop().await;
    let app = &shop.app;
    let user = app.register(&email("pay-refund")).await;
    let payment = created(app, &user, "tbank", 100).await;
    let id = payment["payment_id"].as_str().unwrap();
    let tb_id = fake::only_id(&shop.tbank);
    let confirmed = fake::tbank_notification(&shop.tbank, &tb_id, "CONFIRMED", true);
    assert_eq!(deliver_json(app, "tbank", &confirmed).await.0, 200);
    assert_eq!(balance(app, &user).await["balance"], 1000);
    app.topup(&user.user_id, -700).await; // spent meanwhile

    let refunded = fake::tbank_notification(&shop.tbank, &tb_id, "REFUNDED", true);
    for _ in 0..3 {
        assert_eq!(
            deliver_json(app, "tbank", &refunded).await,
            (200, "OK".to_owned())
        );
    }
    assert_eq!(balance(app, &user).await["balance"], 0, "never below zero");
    assert_eq!(status_of(app, &user, id).await["status"], "refunded");
    let conn = rusqlite::Connection::open(app.database_path()).unwrap();
    let shortfall: i64 = conn
        .query_row(
            "select shortfall_raits from payments where id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(shortfall, 700);
    let debits: i64 = conn
        .query_row(
            "select count(*) from transactions where user_id = ?1 and type = 'adjustment' and amount = -300",
            [&user.user_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(debits, 1);
    assert_ledger_holds(app, &user);
}

#[tokio::test]
async fn every_webhook_call_is_logged_with_its_verdict_and_no_secret() {
    let shop = shop().await;
    let app = &shop.app;
    let user = app.register(&email("pay-log")).await;
    created(app, &user, "tbank", 100).await;
    let tb_id = fake::only_id(&shop.tbank);
    let confirmed = fake::tbank_notification(&shop.tbank, &tb_id, "CONFIRMED", true);
    let token = confirmed["Token"].as_str().unwrap().to_owned();
    let mut forged = confirmed.clone();
    forged["Token"] = json!("0000");
    deliver_json(app, "tbank", &forged).await;
    deliver_json(app, "tbank", &confirmed).await;
    deliver_json(app, "tbank", &confirmed).await;
    let conn = rusqlite::Connection::open(app.database_path()).unwrap();
    let rows: Vec<(String, String, String)> = conn
        .prepare("select verdict, body, headers from payment_webhooks order by created_at, id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let verdicts: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(verdicts, ["rejected:forged", "credited", "duplicate"]);
    for (_, body, headers) in &rows {
        assert!(
            !body.contains(&token) && !body.contains(fake::TB_PASSWORD),
            "{body}"
        );
        assert!(body.contains("CONFIRMED"));
        assert!(headers.contains("application/json"));
    }
}

#[tokio::test]
async fn a_payment_is_its_owners_alone() {
    let shop = shop().await;
    let app = &shop.app;
    let owner = app.register(&email("pay-owner")).await;
    let other = app.register(&email("pay-other")).await;
    let payment = created(app, &owner, "tbank", 100).await;
    let id = payment["payment_id"].as_str().unwrap();
    for path in [
        format!("/api/v1/payments/{id}/status"),
        "/api/v1/payments/nope/status".into(),
    ] {
        expect_error(
            app.get_authed(&path, &other.access_token).await,
            404,
            "not_found",
        )
        .await;
    }
    assert_eq!(status_of(app, &owner, id).await["status"], "pending");
    // Webhooks of a provider that is not configured, or that does not exist.
    let bare = spawn_app().await;
    expect_error(
        bare.post_json("/api/v1/payments/webhook/tbank", &json!({}))
            .await,
        404,
        "not_found",
    )
    .await;
    expect_error(
        bare.post_json("/api/v1/payments/webhook/paypal", &json!({}))
            .await,
        404,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn a_create_cut_off_by_a_stop_is_failed_at_the_next_start() {
    let shop = shop().await;
    let user = shop.app.register(&email("pay-cut")).await;
    // What a create leaves when the process dies while the provider is being asked.
    let user_id = user.user_id.clone();
    let id = shop
        .app
        .state
        .db
        .write(move |tx| {
            let p = easy_writer::payments::store::open(
                tx,
                &user_id,
                easy_writer::payments::Slug::TBank,
                100,
                1000,
            )?;
            easy_writer::idempotency::claim(tx, &user_id, "cut-key", "h")?;
            easy_writer::idempotency::attach(tx, &user_id, "cut-key", &p.id)?;
            Ok::<_, easy_writer::db::Error>(p.id)
        })
        .await
        .unwrap();
    let dir = shop.app.stop().await;
    let mut b = builder().data_dir(dir);
    for (k, v) in fake::env() {
        b = b.env(k, v);
    }
    let app = b.spawn().await;
    let status: Value = app
        .get_authed(&format!("/api/v1/payments/{id}/status"), &user.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "failed");
    let conn = rusqlite::Connection::open(app.database_path()).unwrap();
    let answer: (u16, String) = conn
        .query_row(
            "select response_status, response_body from idempotency_keys where key = 'cut-key'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(answer.0, 503);
    assert!(answer.1.contains("interrupted"));
}

#[tokio::test]
async fn a_flood_of_forgeries_is_answered_but_logged_only_up_to_a_limit() {
    let shop = shop().await;
    let app = &shop.app;
    let user = app.register(&email("pay-flood")).await;
    created(app, &user, "tbank", 100).await;
    let tb_id = fake::only_id(&shop.tbank);
    let confirmed = fake::tbank_notification(&shop.tbank, &tb_id, "CONFIRMED", true);
    let mut forged = confirmed.clone();
    forged["Token"] = json!("f".repeat(64));
    forged["Pan"] = json!("x".repeat(40_000));
    let limit = easy_writer::payments::REFUSALS_LOGGED_PER_MINUTE as usize;
    for _ in 0..limit + 10 {
        assert_eq!(deliver_json(app, "tbank", &forged).await.0, 401);
    }
    // A genuine notification is still processed and logged.
    assert_eq!(
        deliver_json(app, "tbank", &confirmed).await,
        (200, "OK".to_owned())
    );
    assert_eq!(balance(app, &user).await["balance"], 1000);
    let conn = rusqlite::Connection::open(app.database_path()).unwrap();
    let (refused, longest): (usize, usize) = conn
        .query_row(
            "select count(*), max(length(body)) from payment_webhooks where verdict like 'rejected:%'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(refused, limit);
    assert!(
        longest <= 2 * 1024 + 4,
        "a refused call's body is cut short: {longest}"
    );
    let credited: i64 = conn
        .query_row(
            "select count(*) from payment_webhooks where verdict = 'credited'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(credited, 1);
}
