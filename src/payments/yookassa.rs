//! YooKassa (ЮKassa) API v3 (reference §1): a payment opened with `POST /payments` and a
//! redirect; notifications are unsigned, so a notice is built only from the payment (or refund)
//! re-fetched with our credentials.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::http::{basic, read, transport};
use super::{
    Event, Failure, Find, Incoming, Known, Notice, Order, Rejection, Started, State, Taxation, Vat,
    money,
};
use crate::config::{Config, Secret};

pub struct YooKassa {
    http: reqwest::Client,
    base_url: String,
    shop_id: String,
    secret_key: Secret,
}

/// How a re-fetch of an object went.
enum Fetched {
    Found(Value),
    /// 404: YooKassa does not know the object.
    Missing,
    /// Anything else that is not an answer we can use; the text is for the log.
    Failed(String),
}

impl YooKassa {
    /// `None` unless its credentials are configured.
    pub fn from_config(config: &Config, http: reqwest::Client) -> Option<YooKassa> {
        let c = &config.yookassa;
        Some(YooKassa::new(
            http,
            &c.base_url,
            c.shop_id.as_deref()?,
            c.secret_key.clone()?,
        ))
    }

    fn new(http: reqwest::Client, base_url: &str, shop_id: &str, secret_key: Secret) -> YooKassa {
        YooKassa {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            shop_id: shop_id.to_owned(),
            secret_key,
        }
    }

    fn authorization(&self) -> String {
        basic(&self.shop_id, self.secret_key.expose())
    }

    /// Opens the payment; `Idempotence-Key` is our payment id, so a retried create can never
    /// make two payments.
    pub async fn start(&self, order: &Order<'_>) -> Result<Started, Failure> {
        let body = create_body(order);
        let response = self
            .http
            .post(format!("{}/payments", self.base_url))
            .header(reqwest::header::AUTHORIZATION, self.authorization())
            .header("Idempotence-Key", order.payment_id)
            .json(&body)
            .send()
            .await
            .map_err(|e| Failure(format!("yookassa create: {}", transport(&e))))?;
        let status = response.status();
        let answer = read(response)
            .await
            .map_err(|e| Failure(format!("yookassa create: {e}")))?;
        if !status.is_success() {
            return Err(Failure(format!(
                "yookassa create: HTTP {}{}",
                status.as_u16(),
                error_detail(&answer)
            )));
        }
        let payment: Value = serde_json::from_slice(&answer)
            .map_err(|_| Failure("yookassa create: unreadable answer".into()))?;
        let id = text(&payment, &["id"]);
        let provider_status = text(&payment, &["status"]);
        let url = text(&payment, &["confirmation", "confirmation_url"]);
        match (id, provider_status, url) {
            (_, Some("canceled"), _) => Err(Failure("yookassa create: payment canceled".into())),
            (Some(id), Some(provider_status), Some(url)) if !id.is_empty() && !url.is_empty() => {
                Ok(Started {
                    external_id: id.to_owned(),
                    payment_url: url.to_owned(),
                    provider_status: provider_status.to_owned(),
                    widget: None,
                })
            }
            _ => Err(Failure(
                "yookassa create: answer without id, status or confirmation_url".into(),
            )),
        }
    }

    /// Reads the notification only for the object's id and event, then builds the notice from
    /// the object as YooKassa answers our own request for it.
    pub async fn notice(&self, incoming: &Incoming<'_>) -> Result<Notice, Rejection> {
        let body: Value = serde_json::from_slice(incoming.body)
            .map_err(|_| Rejection::Malformed("not JSON".into()))?;
        if text(&body, &["type"]) != Some("notification") {
            return Err(Rejection::Malformed("not a notification".into()));
        }
        let event =
            text(&body, &["event"]).ok_or_else(|| Rejection::Malformed("no event".into()))?;
        let id = text(&body, &["object", "id"])
            .ok_or_else(|| Rejection::Malformed("no object id".into()))?;
        if !valid_id(id) {
            return Err(Rejection::Malformed(
                "object id of an unexpected shape".into(),
            ));
        }
        let (collection, refund) = if event.starts_with("payment.") {
            ("payments", false)
        } else if event == "refund.succeeded" {
            ("refunds", true)
        } else {
            return Err(Rejection::Malformed(format!(
                "unexpected event {:?}",
                event.chars().take(64).collect::<String>()
            )));
        };
        let object = match self.fetch(collection, id).await {
            Fetched::Found(object) => object,
            Fetched::Missing => {
                return Err(Rejection::Forged(format!("yookassa does not know {id}")));
            }
            Fetched::Failed(why) => return Err(Rejection::Unverifiable(why)),
        };
        let notice = if refund {
            refund_notice(&object)
        } else {
            payment_notice(&object)
        };
        notice.ok_or_else(|| {
            Rejection::Unverifiable(format!("yookassa {collection}/{id}: unreadable object"))
        })
    }

    /// The YooKassa payment id a notification claims to be about (`object.id` of a payment
    /// event, `object.payment_id` of a refund), unverified: the core asks its own database
    /// before it lets a stranger's body make us call YooKassa.
    pub fn claimed_payment(body: &[u8]) -> Option<String> {
        let body: Value = serde_json::from_slice(body).ok()?;
        let field = if text(&body, &["event"])?.starts_with("refund.") {
            "payment_id"
        } else {
            "id"
        };
        text(&body, &["object", field])
            .filter(|id| valid_id(id))
            .map(str::to_owned)
    }

    /// Reconciliation: the payment as YooKassa has it now.
    pub async fn state(&self, known: Known<'_>) -> Result<Option<State>, Failure> {
        let Some(id) = known.external_id else {
            return Ok(None);
        };
        if !valid_id(id) {
            return Err(Failure(
                "yookassa state: stored id of an unexpected shape".into(),
            ));
        }
        match self.fetch("payments", id).await {
            Fetched::Found(object) => payment_notice(&object)
                .map(Some)
                .ok_or_else(|| Failure(format!("yookassa payments/{id}: unreadable object"))),
            Fetched::Missing => Ok(None),
            Fetched::Failed(why) => Err(Failure(why)),
        }
    }

    async fn fetch(&self, collection: &str, id: &str) -> Fetched {
        let response = match self
            .http
            .get(format!("{}/{collection}/{id}", self.base_url))
            .header(reqwest::header::AUTHORIZATION, self.authorization())
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return Fetched::Failed(format!("yookassa {collection}: {}", transport(&e))),
        };
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Fetched::Missing;
        }
        let answer = match read(response).await {
            Ok(a) => a,
            Err(e) => return Fetched::Failed(format!("yookassa {collection}: {e}")),
        };
        if !status.is_success() {
            return Fetched::Failed(format!(
                "yookassa {collection}: HTTP {}{}",
                status.as_u16(),
                error_detail(&answer)
            ));
        }
        match serde_json::from_slice::<Value>(&answer) {
            Ok(v) if v.is_object() => Fetched::Found(v),
            _ => Fetched::Failed(format!("yookassa {collection}: unreadable answer")),
        }
    }
}

/// The create-payment body (reference §1.3), with the receipt only when one is configured.
fn create_body(order: &Order<'_>) -> Value {
    let amount = json!({"value": money::roubles(order.amount_kopecks), "currency": "RUB"});
    let mut body = json!({
        "amount": amount,
        "capture": true,
        "confirmation": {"type": "redirect", "return_url": order.return_url},
        "description": order.description,
        "metadata": {"payment_id": order.payment_id, "user_id": order.user_id},
    });
    if let (Some(receipt), Some(map)) = (order.receipt, body.as_object_mut()) {
        map.insert(
            "receipt".into(),
            json!({
                "customer": {"email": order.email},
                "items": [{
                    "description": receipt.item_name,
                    // An integer: what current docs show (self-employed receipts accept only
                    // integers); the older decimal string "1.00" means the same.
                    "quantity": 1,
                    "amount": amount,
                    "vat_code": vat_code(receipt.vat),
                    "payment_mode": "full_prepayment",
                    "payment_subject": "service",
                }],
                "tax_system_code": tax_system_code(receipt.taxation),
            }),
        );
    }
    body
}

/// YooKassa `vat_code` (11 and 12 are the 22 % rates of 2026).
fn vat_code(vat: Vat) -> u8 {
    match vat {
        Vat::None => 1,
        Vat::Vat0 => 2,
        Vat::Vat10 => 3,
        Vat::Vat20 => 4,
        Vat::Vat110 => 5,
        Vat::Vat120 => 6,
        Vat::Vat5 => 7,
        Vat::Vat7 => 8,
        Vat::Vat105 => 9,
        Vat::Vat107 => 10,
        Vat::Vat22 => 11,
        Vat::Vat122 => 12,
    }
}

/// YooKassa `tax_system_code` (4 was ENVD, abolished).
fn tax_system_code(taxation: Taxation) -> u8 {
    match taxation {
        Taxation::Osn => 1,
        Taxation::UsnIncome => 2,
        Taxation::UsnIncomeOutcome => 3,
        Taxation::Esn => 5,
        Taxation::Patent => 6,
    }
}

/// A payment object (as fetched) as a notice; `None` when it lacks what a notice needs.
fn payment_notice(payment: &Value) -> Option<Notice> {
    let id = text(payment, &["id"])?;
    let status = text(payment, &["status"])?;
    let amount = money::kopecks(text(payment, &["amount", "value"])?)?;
    let currency = text(payment, &["amount", "currency"])?;
    let paid = payment.get("paid").and_then(Value::as_bool) == Some(true);
    let event = match status {
        "succeeded" if paid => Event::Paid,
        "canceled" => Event::Failed,
        _ => Event::Progress,
    };
    let find = match text(payment, &["metadata", "payment_id"]) {
        Some(ours) => Find::Id(ours.to_owned()),
        None => Find::External(id.to_owned()),
    };
    Some(Notice {
        payment_id: None,
        find,
        event,
        amount_kopecks: Some(amount),
        currency: Some(currency.to_owned()),
        external_id: Some(id.to_owned()),
        account: text(payment, &["metadata", "user_id"]).map(str::to_owned),
        provider_status: status.to_owned(),
        test: payment.get("test").and_then(Value::as_bool) == Some(true),
    })
}

/// A refund object (as fetched) as a notice about the payment it refunds.
fn refund_notice(refund: &Value) -> Option<Notice> {
    let id = text(refund, &["id"])?;
    let payment_id = text(refund, &["payment_id"])?;
    let status = text(refund, &["status"])?;
    let amount = money::kopecks(text(refund, &["amount", "value"])?)?;
    let currency = text(refund, &["amount", "currency"])?;
    let event = if status == "succeeded" {
        Event::Refunded {
            refund_id: id.to_owned(),
            amount_kopecks: amount,
        }
    } else {
        Event::Progress
    };
    Some(Notice {
        payment_id: None,
        find: Find::External(payment_id.to_owned()),
        event,
        amount_kopecks: None,
        currency: Some(currency.to_owned()),
        external_id: Some(payment_id.to_owned()),
        account: None,
        provider_status: status.to_owned(),
        test: refund.get("test").and_then(Value::as_bool) == Some(true),
    })
}

/// An id we put into a URL path: 1–64 characters of `[A-Za-z0-9_-]` (YooKassa ids are UUIDs).
fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A string at a path of object keys.
fn text<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_str)
}

/// YooKassa's error `code` and `description`, for the log.
fn error_detail(answer: &[u8]) -> String {
    let Ok(error) = serde_json::from_slice::<Value>(answer) else {
        return String::new();
    };
    let field = |key: &str| {
        text(&error, &[key])
            .map(|s| s.chars().take(200).collect::<String>())
            .unwrap_or_default()
    };
    format!(" {}: {}", field("code"), field("description"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payments::Receipt;
    use axum::http::{HeaderMap, Method};
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const SHOP: &str = "123456";
    const KEY: &str = "test_SecretKey_XYZ";
    const AUTH: &str = "Basic MTIzNDU2OnRlc3RfU2VjcmV0S2V5X1hZWg==";
    const PAYMENT_ID: &str = "0190a3b2-7c4d-7e5f-8a9b-0c1d2e3f4a5b";
    const EXTERNAL: &str = "2d9c6f3a-000f-5000-8000-1a2b3c4d5e6f";

    fn provider(server: &MockServer) -> YooKassa {
        YooKassa::new(
            reqwest::Client::new(),
            &format!("{}/v3/", server.uri()),
            SHOP,
            Secret::new(KEY),
        )
    }

    fn order(receipt: Option<&Receipt>) -> Order<'_> {
        Order {
            payment_id: PAYMENT_ID,
            number: 7,
            user_id: "user-42",
            email: "u@example.com",
            amount_kopecks: 15_000,
            description: "Пополнение баланса: 1500 райтов",
            return_url: "https://app.example.com/payments/return?payment_id=x",
            webhook_url: "https://api.example.com/api/v1/payments/webhook/yookassa",
            receipt,
        }
    }

    /// The vector's sample notification object, with our metadata key.
    fn payment(status: &str, paid: bool) -> Value {
        json!({
            "id": EXTERNAL,
            "status": status,
            "paid": paid,
            "amount": {"value": "150.00", "currency": "RUB"},
            "income_amount": {"value": "144.75", "currency": "RUB"},
            "description": "Пополнение баланса: 1500 кредитов",
            "metadata": {"user_id": "42", "payment_id": PAYMENT_ID},
            "created_at": "2024-05-01T09:34:56.000Z",
            "test": true,
            "refundable": true
        })
    }

    fn notification(event: &str, id: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({"type": "notification", "event": event, "object": {"id": id, "status": "succeeded"}}))
            .unwrap()
    }

    async fn notice_of(p: &YooKassa, body: &[u8]) -> Result<Notice, Rejection> {
        let headers = HeaderMap::new();
        p.notice(&Incoming {
            method: &Method::POST,
            query: None,
            headers: &headers,
            body,
            kind: None,
        })
        .await
    }

    async fn serve_payment(server: &MockServer, object: Value) {
        Mock::given(method("GET"))
            .and(path(format!("/v3/payments/{EXTERNAL}")))
            .and(header("Authorization", AUTH))
            .respond_with(ResponseTemplate::new(200).set_body_json(object))
            .mount(server)
            .await;
    }

    #[test]
    fn basic_auth_matches_the_vector() {
        assert_eq!(basic(SHOP, KEY), AUTH);
    }

    #[test]
    fn from_config_needs_both_credentials() {
        let mut config = Config::default();
        assert!(YooKassa::from_config(&config, reqwest::Client::new()).is_none());
        config.yookassa.shop_id = Some(SHOP.into());
        assert!(YooKassa::from_config(&config, reqwest::Client::new()).is_none());
        config.yookassa.secret_key = Some(Secret::new(KEY));
        let p = YooKassa::from_config(&config, reqwest::Client::new()).unwrap();
        assert_eq!(p.base_url, "https://api.yookassa.ru/v3");
    }

    #[test]
    fn ids_are_checked_before_they_reach_a_url() {
        assert!(valid_id(EXTERNAL));
        assert!(valid_id("a_B-9"));
        for bad in ["", "../payments", "a/b", "a?b", "a b", "ю", &"a".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn start_sends_the_documented_request_without_receipt() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v3/payments"))
            .and(header("Authorization", AUTH))
            .and(header("Idempotence-Key", PAYMENT_ID))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "id": EXTERNAL, "status": "pending", "paid": false,
                "confirmation": {"type": "redirect", "confirmation_url": "https://yoomoney.ru/checkout/payments/v2/contract?orderId=x"}
            })))
            .expect(1)
            .mount(&server)
            .await;
        let started = provider(&server).start(&order(None)).await.unwrap();
        assert_eq!(started.external_id, EXTERNAL);
        assert_eq!(
            started.payment_url,
            "https://yoomoney.ru/checkout/payments/v2/contract?orderId=x"
        );
        assert_eq!(started.provider_status, "pending");
        assert!(started.widget.is_none());

        let requests = server.received_requests().await.unwrap();
        let body: Value = serde_json::from_slice(&requests[0].body).unwrap();
        assert_eq!(
            body["amount"],
            json!({"value": "150.00", "currency": "RUB"})
        );
        assert_eq!(body["capture"], json!(true));
        assert_eq!(
            body["confirmation"],
            json!({"type": "redirect", "return_url": "https://app.example.com/payments/return?payment_id=x"})
        );
        assert_eq!(body["description"], "Пополнение баланса: 1500 райтов");
        assert_eq!(
            body["metadata"],
            json!({"payment_id": PAYMENT_ID, "user_id": "user-42"})
        );
        assert!(body.get("receipt").is_none());
        assert_eq!(body.as_object().unwrap().len(), 5);
    }

    #[tokio::test]
    async fn start_attaches_the_receipt() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v3/payments"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "id": EXTERNAL, "status": "pending",
                "confirmation": {"type": "redirect", "confirmation_url": "https://pay.example/x"}
            })))
            .mount(&server)
            .await;
        let receipt = Receipt {
            taxation: Taxation::UsnIncome,
            vat: Vat::Vat22,
            item_name: "Райты".into(),
        };
        provider(&server)
            .start(&order(Some(&receipt)))
            .await
            .unwrap();
        let requests = server.received_requests().await.unwrap();
        let body: Value = serde_json::from_slice(&requests[0].body).unwrap();
        assert_eq!(
            body["receipt"],
            json!({
                "customer": {"email": "u@example.com"},
                "items": [{
                    "description": "Райты",
                    "quantity": 1,
                    "amount": {"value": "150.00", "currency": "RUB"},
                    "vat_code": 11,
                    "payment_mode": "full_prepayment",
                    "payment_subject": "service"
                }],
                "tax_system_code": 2
            })
        );
    }

    #[test]
    fn receipt_codes() {
        let vats: Vec<u8> = Vat::ALL.into_iter().map(vat_code).collect();
        // none, 0, 5, 7, 10, 20, 22, 105, 107, 110, 120, 122
        assert_eq!(vats, [1, 2, 7, 8, 3, 4, 11, 9, 10, 5, 6, 12]);
        let taxes: Vec<u8> = Taxation::ALL.into_iter().map(tax_system_code).collect();
        assert_eq!(taxes, [1, 2, 3, 5, 6]);
    }

    #[tokio::test]
    async fn start_failures() {
        let server = MockServer::start().await;
        let p = provider(&server);
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(400).set_body_json(json!({
                "type": "error", "id": "e1", "code": "invalid_request",
                "description": "Invalid amount", "parameter": "amount.value"
            })))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        let Failure(message) = p.start(&order(None)).await.unwrap_err();
        assert!(message.contains("400"), "{message}");
        assert!(message.contains("invalid_request"), "{message}");
        assert!(message.contains("Invalid amount"), "{message}");
        assert!(!message.contains(KEY));

        for answer in [
            ResponseTemplate::new(500).set_body_string("oops"),
            ResponseTemplate::new(200).set_body_string("<html>"),
            ResponseTemplate::new(200).set_body_json(json!({"id": EXTERNAL, "status": "pending"})),
            ResponseTemplate::new(200).set_body_json(json!({
                "id": EXTERNAL, "status": "canceled",
                "confirmation": {"confirmation_url": "https://pay.example/x"}
            })),
        ] {
            server.reset().await;
            Mock::given(method("POST"))
                .respond_with(answer)
                .mount(&server)
                .await;
            assert!(p.start(&order(None)).await.is_err());
        }
    }

    #[tokio::test]
    async fn start_when_down() {
        let server = MockServer::start().await;
        let p = provider(&server);
        drop(server);
        let Failure(message) = p.start(&order(None)).await.unwrap_err();
        assert!(!message.contains("127.0.0.1"), "{message}");
    }

    #[tokio::test]
    async fn the_sample_notification_is_believed_only_after_the_refetch() {
        let server = MockServer::start().await;
        serve_payment(&server, payment("succeeded", true)).await;
        let notice = notice_of(
            &provider(&server),
            &notification("payment.succeeded", EXTERNAL),
        )
        .await
        .unwrap();
        assert_eq!(
            notice,
            Notice {
                payment_id: None,
                find: Find::Id(PAYMENT_ID.into()),
                event: Event::Paid,
                // 150.00 RUB: 1500 raits at 10 raits per rouble.
                amount_kopecks: Some(15_000),
                currency: Some("RUB".into()),
                external_id: Some(EXTERNAL.into()),
                account: Some("42".into()),
                provider_status: "succeeded".into(),
                test: true,
            }
        );
    }

    #[tokio::test]
    async fn the_fetched_status_decides_not_the_event() {
        for (status, paid, event) in [
            ("succeeded", true, Event::Paid),
            ("succeeded", false, Event::Progress),
            ("canceled", false, Event::Failed),
            ("pending", false, Event::Progress),
            ("waiting_for_capture", true, Event::Progress),
        ] {
            let server = MockServer::start().await;
            serve_payment(&server, payment(status, paid)).await;
            // The notification claims success whatever the payment really is.
            let notice = notice_of(
                &provider(&server),
                &notification("payment.succeeded", EXTERNAL),
            )
            .await
            .unwrap();
            assert_eq!(notice.event, event, "{status}");
            assert_eq!(notice.provider_status, status);
        }
    }

    #[tokio::test]
    async fn without_our_metadata_the_payment_is_found_by_its_id() {
        let server = MockServer::start().await;
        let mut object = payment("succeeded", true);
        object["metadata"] = json!({});
        serve_payment(&server, object).await;
        let notice = notice_of(
            &provider(&server),
            &notification("payment.succeeded", EXTERNAL),
        )
        .await
        .unwrap();
        assert_eq!(notice.find, Find::External(EXTERNAL.into()));
        assert_eq!(notice.account, None);
    }

    #[tokio::test]
    async fn refunds_are_refetched_too() {
        let server = MockServer::start().await;
        let refund_id = "2e1a8c9d-0015-5000-9000-1b2c3d4e5f60";
        for (status, event) in [
            (
                "succeeded",
                Event::Refunded {
                    refund_id: refund_id.into(),
                    amount_kopecks: 5_000,
                },
            ),
            ("pending", Event::Progress),
        ] {
            server.reset().await;
            Mock::given(method("GET"))
                .and(path(format!("/v3/refunds/{refund_id}")))
                .and(header("Authorization", AUTH))
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                    "id": refund_id, "payment_id": EXTERNAL, "status": status,
                    "amount": {"value": "50.00", "currency": "RUB"}
                })))
                .mount(&server)
                .await;
            let notice = notice_of(
                &provider(&server),
                &notification("refund.succeeded", refund_id),
            )
            .await
            .unwrap();
            assert_eq!(
                notice,
                Notice {
                    payment_id: None,
                    find: Find::External(EXTERNAL.into()),
                    event,
                    amount_kopecks: None,
                    currency: Some("RUB".into()),
                    external_id: Some(EXTERNAL.into()),
                    account: None,
                    provider_status: status.into(),
                    test: false,
                }
            );
        }
    }

    #[tokio::test]
    async fn an_unknown_payment_is_forged() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(404).set_body_json(json!({
                "type": "error", "code": "not_found"
            })))
            .mount(&server)
            .await;
        let rejection = notice_of(
            &provider(&server),
            &notification("payment.succeeded", EXTERNAL),
        )
        .await
        .unwrap_err();
        assert!(matches!(rejection, Rejection::Forged(_)), "{rejection:?}");
    }

    #[tokio::test]
    async fn a_failed_refetch_is_unverifiable() {
        let server = MockServer::start().await;
        let p = provider(&server);
        for answer in [
            ResponseTemplate::new(500),
            ResponseTemplate::new(429),
            ResponseTemplate::new(401)
                .set_body_json(json!({"type": "error", "code": "invalid_credentials"})),
            ResponseTemplate::new(403),
            ResponseTemplate::new(200).set_body_string("garbage"),
            ResponseTemplate::new(200).set_body_json(json!({"id": EXTERNAL})),
            ResponseTemplate::new(200).set_body_json(json!([1, 2])),
        ] {
            server.reset().await;
            Mock::given(method("GET"))
                .respond_with(answer)
                .mount(&server)
                .await;
            let rejection = notice_of(&p, &notification("payment.succeeded", EXTERNAL))
                .await
                .unwrap_err();
            assert!(
                matches!(rejection, Rejection::Unverifiable(_)),
                "{rejection:?}"
            );
        }
        drop(server);
        let rejection = notice_of(&p, &notification("payment.succeeded", EXTERNAL))
            .await
            .unwrap_err();
        assert!(
            matches!(rejection, Rejection::Unverifiable(_)),
            "{rejection:?}"
        );
    }

    #[tokio::test]
    async fn malformed_notifications_are_refused_without_asking() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_json(payment("succeeded", true)))
            .expect(0)
            .mount(&server)
            .await;
        let p = provider(&server);
        let bodies: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"\xff\xfe garbage".to_vec(),
            b"[]".to_vec(),
            br#"{"type":"notification","event":"payment.succeeded"}"#.to_vec(),
            br#"{"type":"notification","event":"payment.succeeded","object":{"id":42}}"#.to_vec(),
            br#"{"type":"other","event":"payment.succeeded","object":{"id":"abc"}}"#.to_vec(),
            br#"{"event":"payment.succeeded","object":{"id":"abc"}}"#.to_vec(),
            br#"{"type":"notification","object":{"id":"abc"}}"#.to_vec(),
            notification("payout.succeeded", EXTERNAL),
            notification("refund.pending", EXTERNAL),
            notification("payment.succeeded", "../refunds/x"),
            notification("payment.succeeded", ""),
            notification("payment.succeeded", &"a".repeat(65)),
        ];
        for body in bodies {
            let rejection = notice_of(&p, &body).await.unwrap_err();
            assert!(
                matches!(rejection, Rejection::Malformed(_)),
                "{:?}: {rejection:?}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    #[tokio::test]
    async fn state_asks_for_the_payment() {
        let server = MockServer::start().await;
        let p = provider(&server);
        let known = Known {
            payment_id: PAYMENT_ID,
            number: 7,
            external_id: Some(EXTERNAL),
        };
        assert!(
            p.state(Known {
                external_id: None,
                ..known
            })
            .await
            .unwrap()
            .is_none()
        );

        serve_payment(&server, payment("canceled", false)).await;
        let state = p.state(known).await.unwrap().unwrap();
        assert_eq!(state.event, Event::Failed);
        assert_eq!(state.find, Find::Id(PAYMENT_ID.into()));
        assert_eq!(state.amount_kopecks, Some(15_000));

        server.reset().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(404))
            .mount(&server)
            .await;
        assert!(p.state(known).await.unwrap().is_none());

        for answer in [
            ResponseTemplate::new(500),
            ResponseTemplate::new(401),
            ResponseTemplate::new(200).set_body_string("{"),
        ] {
            server.reset().await;
            Mock::given(method("GET"))
                .respond_with(answer)
                .mount(&server)
                .await;
            assert!(p.state(known).await.is_err());
        }
        assert!(
            p.state(Known {
                external_id: Some("a/b"),
                ..known
            })
            .await
            .is_err()
        );
    }
}
