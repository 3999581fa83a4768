//! T-Bank internet acquiring, API v2 (reference §4): `Init` opens a payment, JSON notifications
//! report its statuses, `GetState` answers reconciliation.
//!
//! Requests and notifications are authenticated by one `Token` (§4.5): SHA-256 over the sorted
//! root-level scalar values plus the terminal password. Numbers are taken as serde_json writes
//! them back: exact for integers (every T-Bank amount and id), serde's shortest form for a float.
//! Money is final only at `CONFIRMED` with `Success`; `AUTHORIZED` is a hold and moves nothing.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Event, Failure, Find, Incoming, Known, Notice, Order, Rejection, Started, State};
use crate::config::{Config, Secret};

/// A notification is a few hundred bytes; anything far larger is not T-Bank's.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The request or notification token (§4.5): root scalars except `Token` (objects, arrays and
/// nulls left out) plus `Password`, sorted by key, values concatenated, SHA-256 lowercase hex.
pub fn token(fields: &Map<String, Value>, password: &str) -> String {
    let mut pairs: Vec<(&str, String)> = fields
        .iter()
        .filter(|(k, _)| k.as_str() != "Token")
        .filter_map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Null | Value::Array(_) | Value::Object(_) => return None,
            };
            Some((k.as_str(), text))
        })
        .collect();
    pairs.push(("Password", password.to_owned()));
    pairs.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let joined: String = pairs.into_iter().map(|(_, v)| v).collect();
    hex(&Sha256::digest(joined.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A string or a JSON number as its text (`PaymentId` is a string in answers, a number in
/// notifications).
fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A kopeck amount from a JSON integer (or a string of digits), never through `f64`.
fn kopecks(v: Option<&Value>) -> Option<i64> {
    let t = text(v)?;
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// What a payment status means for us (reference §4.4). `None`: a refund without the fields
/// its id and amount are made of.
fn event(
    status: &str,
    success: bool,
    payment_id: Option<&str>,
    amount: Option<i64>,
) -> Option<Event> {
    Some(match status {
        "CONFIRMED" if success => Event::Paid,
        "REJECTED" | "CANCELED" | "DEADLINE_EXPIRED" | "AUTH_FAIL" | "REVERSED" => Event::Failed,
        "REFUNDED" => Event::Refunded {
            refund_id: format!("{}:REFUNDED", payment_id?),
            amount_kopecks: amount?,
        },
        // The docs do not say whether `Amount` is then the part refunded or what remains
        // (`Cancel` answers both, as OriginalAmount/NewAmount): recorded, no money moves.
        "PARTIAL_REFUNDED" => Event::Progress,
        // NEW, FORM_SHOWED, AUTHORIZED (a hold), CONFIRMING, REFUNDING, unknown words.
        _ => Event::Progress,
    })
}

/// Reads a notification or `GetState` answer into a [`Notice`]; `order_id` is where to find
/// the payment when the body does not say.
fn read(body: &Map<String, Value>, order_id: Option<&str>) -> Result<Notice, &'static str> {
    let status = body
        .get("Status")
        .and_then(Value::as_str)
        .ok_or("no Status")?;
    let order_id = body
        .get("OrderId")
        .and_then(Value::as_str)
        .or(order_id)
        .ok_or("no OrderId")?;
    let success = body.get("Success").and_then(Value::as_bool) == Some(true);
    let payment_id = text(body.get("PaymentId"));
    let amount = match body.get("Amount") {
        None | Some(Value::Null) => None,
        v => Some(kopecks(v).ok_or("Amount is not a kopeck integer")?),
    };
    let event = event(status, success, payment_id.as_deref(), amount)
        .ok_or("a refund without PaymentId or Amount")?;
    Ok(Notice {
        payment_id: None,
        find: Find::Id(order_id.to_owned()),
        event,
        amount_kopecks: amount,
        currency: None,
        external_id: payment_id,
        account: None,
        provider_status: status.to_owned(),
        test: false,
    })
}

pub struct TBank {
    terminal_key: String,
    password: Secret,
    /// Without a trailing slash.
    base_url: String,
    http: reqwest::Client,
}

impl TBank {
    /// `None` unless the terminal key and its password are set.
    pub fn from_config(config: &Config, http: reqwest::Client) -> Option<TBank> {
        let c = &config.tbank;
        Some(TBank {
            terminal_key: c.terminal_key.clone()?,
            password: c.password.clone()?,
            base_url: c.base_url.trim_end_matches('/').to_owned(),
            http,
        })
    }

    /// POSTs a signed request to `{base_url}/{method}` and returns the answer of a
    /// `Success: true`, `ErrorCode: "0"` call.
    async fn call(
        &self,
        method: &str,
        mut body: Map<String, Value>,
    ) -> Result<Map<String, Value>, Failure> {
        body.insert("TerminalKey".into(), self.terminal_key.clone().into());
        let token = token(&body, self.password.expose());
        body.insert("Token".into(), token.into());
        let response = self
            .http
            .post(format!("{}/{method}", self.base_url))
            .json(&body)
            .send()
            .await
            .map_err(|e| Failure(format!("tbank {method}: {}", e.without_url())))?;
        let status = response.status();
        let bytes = super::http::read(response)
            .await
            .map_err(|e| Failure(format!("tbank {method}: HTTP {status}, {e}")))?;
        let answer = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| match v {
                Value::Object(map) => Some(map),
                _ => None,
            });
        let describe = |a: &Map<String, Value>| {
            let field = |k: &str| text(a.get(k)).unwrap_or_default();
            format!(
                "ErrorCode {:?}, Message {:?}, Details {:?}",
                field("ErrorCode"),
                field("Message"),
                field("Details")
            )
        };
        if !status.is_success() {
            let detail = answer.as_ref().map(describe).unwrap_or_default();
            return Err(Failure(format!("tbank {method}: HTTP {status} {detail}")));
        }
        let answer = answer
            .ok_or_else(|| Failure(format!("tbank {method}: HTTP {status}, not a JSON object")))?;
        let ok = answer.get("Success") == Some(&Value::Bool(true))
            && text(answer.get("ErrorCode")).is_none_or(|c| c == "0");
        if !ok {
            return Err(Failure(format!(
                "tbank {method}: refused, {}",
                describe(&answer)
            )));
        }
        if text(answer.get("TerminalKey")).is_some_and(|k| k != self.terminal_key) {
            return Err(Failure(format!(
                "tbank {method}: answer for another terminal"
            )));
        }
        Ok(answer)
    }

    /// `Init` with our payment id as `OrderId`; the external id is T-Bank's `PaymentId`.
    pub async fn start(&self, order: &Order<'_>) -> Result<Started, Failure> {
        let mut body = Map::new();
        body.insert("Amount".into(), order.amount_kopecks.into());
        body.insert("OrderId".into(), order.payment_id.into());
        body.insert("Description".into(), order.description.into());
        body.insert("NotificationURL".into(), order.webhook_url.into());
        body.insert("SuccessURL".into(), order.return_url.into());
        body.insert("FailURL".into(), order.return_url.into());
        body.insert("DATA".into(), json!({ "user_id": order.user_id }));
        if let Some(r) = order.receipt {
            // FFD 1.05; the names are ours (`Taxation`, `Vat` spell them as T-Bank does).
            // `vat22`/`vat122` are passed as configured: T-Bank's OpenAPI of Sept 2025 does not
            // list them yet.
            body.insert(
                "Receipt".into(),
                json!({
                    "Email": order.email,
                    "Taxation": r.taxation.as_str(),
                    "Items": [{
                        "Name": r.item_name,
                        "Price": order.amount_kopecks,
                        "Quantity": 1,
                        "Amount": order.amount_kopecks,
                        "Tax": r.vat.as_str(),
                        "PaymentMethod": "full_prepayment",
                        "PaymentObject": "service",
                    }],
                }),
            );
        }
        let answer = self.call("Init", body).await?;
        let unreadable = |field: &str| Failure(format!("tbank Init: answer without {field}"));
        Ok(Started {
            external_id: text(answer.get("PaymentId")).ok_or_else(|| unreadable("PaymentId"))?,
            payment_url: answer
                .get("PaymentURL")
                .and_then(Value::as_str)
                .ok_or_else(|| unreadable("PaymentURL"))?
                .to_owned(),
            provider_status: answer
                .get("Status")
                .and_then(Value::as_str)
                .ok_or_else(|| unreadable("Status"))?
                .to_owned(),
            widget: None,
        })
    }

    /// Verifies a notification's `Token` and terminal, then maps its `Status` (see [`event`]).
    /// Notifications without `Status`/`OrderId` (AddCard, …) are not payments: malformed.
    pub async fn notice(&self, incoming: &Incoming<'_>) -> Result<Notice, Rejection> {
        if incoming.body.len() > MAX_BODY_BYTES {
            return Err(Rejection::Malformed("notification too large".into()));
        }
        let body = match serde_json::from_slice::<Value>(incoming.body) {
            Ok(Value::Object(map)) => map,
            _ => return Err(Rejection::Malformed("not a JSON object".into())),
        };
        let received = match body.get("Token") {
            Some(Value::String(t)) => t.to_ascii_lowercase(),
            _ => return Err(Rejection::Forged("no Token".into())),
        };
        let expected = token(&body, self.password.expose());
        if !bool::from(expected.as_bytes().ct_eq(received.as_bytes())) {
            return Err(Rejection::Forged("Token does not match".into()));
        }
        if body.get("TerminalKey").and_then(Value::as_str) != Some(self.terminal_key.as_str()) {
            return Err(Rejection::Forged("another terminal".into()));
        }
        read(&body, None).map_err(|e| Rejection::Malformed(e.into()))
    }

    /// `GetState` by `PaymentId` (`Ok(None)` before we have one); mapped like a notification.
    pub async fn state(&self, known: Known<'_>) -> Result<Option<State>, Failure> {
        let Some(payment_id) = known.external_id else {
            return Ok(None);
        };
        let mut body = Map::new();
        body.insert("PaymentId".into(), payment_id.into());
        let answer = self.call("GetState", body).await?;
        read(&answer, Some(known.payment_id))
            .map(Some)
            .map_err(|e| Failure(format!("tbank GetState: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, Method};
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::payments::{Receipt, Taxation, Vat};

    const TERMINAL: &str = "1700000000000DEMO";
    const PASSWORD: &str = "TestPassword_123";

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn official_vectors() {
        let init = object(json!({
            "TerminalKey": "MerchantTerminalKey",
            "Amount": 19200,
            "OrderId": "00000",
            "Description": "Подарочная карта на 1000 рублей",
            "DATA": {"Phone": "+71234567890", "Email": "a@test.com"},
            "Receipt": {"Email": "a@test.ru", "Phone": "+79031234567", "Taxation": "osn", "Items": []}
        }));
        assert_eq!(
            token(&init, "11111111111111"),
            "72dd466f8ace0a37a1f740ce5fb78101712bc0665d91a8108c7c8a0ccd426db2"
        );
        let notification = object(json!({
            "TerminalKey": "1234567890DEMO",
            "OrderId": "000000",
            "Success": true,
            "Status": "AUTHORIZED",
            "PaymentId": "0000000",
            "ErrorCode": "0",
            "Amount": 1111,
            "CardId": "000000",
            "Pan": "200000******0000",
            "ExpDate": "1111",
            "RebillId": "000000"
        }));
        assert_eq!(
            token(&notification, "11111111111"),
            "1c0964277d0213349243065a0d5b838b8e90d2d25f740d0f2767836e710e80c8"
        );
    }

    #[test]
    fn our_request_vectors() {
        let init = object(json!({
            "TerminalKey": TERMINAL,
            "Amount": 15000,
            "OrderId": "topup-42-0001",
            "Description": "Пополнение баланса: 1500 кредитов",
            "NotificationURL": "https://api.example.com/webhooks/tbank",
            "SuccessURL": "https://app.example.com/pay/success",
            "FailURL": "https://app.example.com/pay/fail",
            "DATA": {"user_id": "42"},
            "Receipt": {"Email": "u@example.com", "Taxation": "usn_income", "Items": [
                {"Name": "Пополнение баланса", "Price": 15000, "Quantity": 1, "Amount": 15000, "Tax": "none"}
            ]}
        }));
        assert_eq!(
            token(&init, PASSWORD),
            "b1d104f4a3094809e19edf2b992dc3802baf79ff976195ce3aee47dcab4e0dc8"
        );
        let get_state = object(json!({"TerminalKey": TERMINAL, "PaymentId": "3093639567"}));
        assert_eq!(
            token(&get_state, PASSWORD),
            "a06a0ebb8d3672611166906222a987918dd72fc59cb425f25fb73684f4d83576"
        );
        // Nulls and a received Token stay out.
        let mut with_extras = get_state.clone();
        with_extras.insert("Token".into(), "whatever".into());
        with_extras.insert("Email".into(), Value::Null);
        assert_eq!(token(&with_extras, PASSWORD), token(&get_state, PASSWORD));
    }

    #[test]
    fn numbers_sign_as_serde_writes_them() {
        // Integers keep their exact text (no `arbitrary_precision` here); a float, which T-Bank
        // does not send, would sign as serde's shortest form: `1.50` as `1.5`.
        let big = object(serde_json::from_str(r#"{"PaymentId": 18446744073709551615}"#).unwrap());
        let mut manual = Sha256::new();
        manual.update(b"TestPassword_12318446744073709551615");
        assert_eq!(token(&big, PASSWORD), hex(&manual.finalize()));
        let float = object(serde_json::from_str(r#"{"X": 1.50}"#).unwrap());
        let mut manual = Sha256::new();
        manual.update(b"TestPassword_1231.5");
        assert_eq!(token(&float, PASSWORD), hex(&manual.finalize()));
    }

    fn notification(status: &str, success: bool, error_code: &str) -> Value {
        json!({
            "TerminalKey": TERMINAL,
            "OrderId": "topup-42-0001",
            "Success": success,
            "Status": status,
            "PaymentId": 3093639567u64,
            "ErrorCode": error_code,
            "Amount": 15000,
            "CardId": 123456789,
            "Pan": "430000******0777",
            "ExpDate": "1230",
            "Data": {"user_id": "42"}
        })
    }

    const CONFIRMED_TOKEN: &str =
        "378433b581b9e2a9f4b5facfca63119f42da47710477beea3e29a0a680afdade";
    const REJECTED_TOKEN: &str = "3a239afb6f154936216d5c850bcfb62fad73edd895e2809cf63c88f0e15822e4";
    const WRONG_TRUE_TOKEN: &str =
        "c1bf2cad217c342715730c29df5d83fc5121423329a2d7fcefdbefb384a1c840";

    #[test]
    fn our_notification_vectors() {
        let confirmed = object(notification("CONFIRMED", true, "0"));
        assert_eq!(token(&confirmed, PASSWORD), CONFIRMED_TOKEN);
        let rejected = object(notification("REJECTED", false, "1051"));
        assert_eq!(token(&rejected, PASSWORD), REJECTED_TOKEN);
        assert_ne!(token(&confirmed, PASSWORD), WRONG_TRUE_TOKEN);
    }

    fn with_token(mut v: Value, token: &str) -> Vec<u8> {
        v["Token"] = token.into();
        serde_json::to_vec(&v).unwrap()
    }

    fn signed(v: Value, password: &str) -> Vec<u8> {
        let t = token(&object(v.clone()), password);
        with_token(v, &t)
    }

    fn tbank(base_url: &str) -> TBank {
        let mut config = Config::default();
        config.tbank.terminal_key = Some(TERMINAL.into());
        config.tbank.password = Some(Secret::new(PASSWORD));
        config.tbank.base_url = base_url.into();
        // As `payments::gateways` builds it: redirects are not followed.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        TBank::from_config(&config, http).unwrap()
    }

    #[test]
    fn configured_only_with_key_and_password() {
        let mut config = Config::default();
        assert!(TBank::from_config(&config, reqwest::Client::new()).is_none());
        config.tbank.terminal_key = Some(TERMINAL.into());
        assert!(TBank::from_config(&config, reqwest::Client::new()).is_none());
        config.tbank.password = Some(Secret::new(PASSWORD));
        assert!(TBank::from_config(&config, reqwest::Client::new()).is_some());
    }

    async fn notice_of(t: &TBank, body: &[u8]) -> Result<Notice, Rejection> {
        let headers = HeaderMap::new();
        t.notice(&Incoming {
            method: &Method::POST,
            query: None,
            headers: &headers,
            body,
            kind: None,
        })
        .await
    }

    fn expected(event: Event, status: &str) -> Notice {
        Notice {
            payment_id: None,
            find: Find::Id("topup-42-0001".into()),
            event,
            amount_kopecks: Some(15_000),
            currency: None,
            external_id: Some("3093639567".into()),
            account: None,
            provider_status: status.into(),
            test: false,
        }
    }

    #[tokio::test]
    async fn notification_vectors_verify() {
        let t = tbank("https://securepay.tinkoff.ru/v2");
        let confirmed = with_token(notification("CONFIRMED", true, "0"), CONFIRMED_TOKEN);
        assert_eq!(
            notice_of(&t, &confirmed).await,
            Ok(expected(Event::Paid, "CONFIRMED"))
        );
        let upper = with_token(
            notification("CONFIRMED", true, "0"),
            &CONFIRMED_TOKEN.to_ascii_uppercase(),
        );
        assert_eq!(
            notice_of(&t, &upper).await,
            Ok(expected(Event::Paid, "CONFIRMED"))
        );
        let rejected = with_token(notification("REJECTED", false, "1051"), REJECTED_TOKEN);
        assert_eq!(
            notice_of(&t, &rejected).await,
            Ok(expected(Event::Failed, "REJECTED"))
        );
        let wrong = with_token(notification("CONFIRMED", true, "0"), WRONG_TRUE_TOKEN);
        assert!(matches!(
            notice_of(&t, &wrong).await,
            Err(Rejection::Forged(_))
        ));
    }

    #[tokio::test]
    async fn every_status_maps() {
        let t = tbank("https://securepay.tinkoff.ru/v2");
        let refunded = Event::Refunded {
            refund_id: "3093639567:REFUNDED".into(),
            amount_kopecks: 15_000,
        };
        let cases = [
            ("CONFIRMED", true, Event::Paid),
            ("CONFIRMED", false, Event::Progress),
            ("REJECTED", false, Event::Failed),
            ("CANCELED", true, Event::Failed),
            ("DEADLINE_EXPIRED", false, Event::Failed),
            ("AUTH_FAIL", false, Event::Failed),
            ("REVERSED", true, Event::Failed),
            ("REFUNDED", true, refunded),
            ("PARTIAL_REFUNDED", true, Event::Progress),
            ("NEW", true, Event::Progress),
            ("FORM_SHOWED", true, Event::Progress),
            ("AUTHORIZED", true, Event::Progress),
            ("CONFIRMING", true, Event::Progress),
            ("REFUNDING", true, Event::Progress),
            ("SOMETHING_NEW", true, Event::Progress),
        ];
        for (status, success, event) in cases {
            let body = signed(notification(status, success, "0"), PASSWORD);
            assert_eq!(
                notice_of(&t, &body).await,
                Ok(expected(event, status)),
                "{status}"
            );
        }
    }

    #[tokio::test]
    async fn forged_notifications() {
        let t = tbank("https://securepay.tinkoff.ru/v2");
        let mut no_token = notification("CONFIRMED", true, "0");
        no_token.as_object_mut().unwrap().remove("Token");
        let mut numeric_token = notification("CONFIRMED", true, "0");
        numeric_token["Token"] = 1.into();
        let mut tampered = notification("CONFIRMED", true, "0");
        tampered["Amount"] = 1_500_000.into();
        let mut other_terminal = notification("CONFIRMED", true, "0");
        other_terminal["TerminalKey"] = "1700000000001DEMO".into();
        for body in [
            serde_json::to_vec(&no_token).unwrap(),
            serde_json::to_vec(&numeric_token).unwrap(),
            with_token(notification("CONFIRMED", true, "0"), ""),
            with_token(tampered, CONFIRMED_TOKEN),
            signed(notification("CONFIRMED", true, "0"), "AnotherPassword"),
            // Signed with our password, but for another terminal.
            signed(other_terminal, PASSWORD),
        ] {
            assert!(
                matches!(notice_of(&t, &body).await, Err(Rejection::Forged(_))),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    #[tokio::test]
    async fn malformed_notifications() {
        let t = tbank("https://securepay.tinkoff.ru/v2");
        let add_card = json!({
            "TerminalKey": TERMINAL, "CustomerKey": "u1", "RequestKey": "r1",
            "Success": true, "ErrorCode": "0", "Status": "COMPLETED"
        });
        let mut no_status = notification("CONFIRMED", true, "0");
        no_status.as_object_mut().unwrap().remove("Status");
        let mut fractional = notification("CONFIRMED", true, "0");
        fractional["Amount"] = json!(150.5);
        let mut negative = notification("CONFIRMED", true, "0");
        negative["Amount"] = json!(-15000);
        let mut refund_no_amount = notification("REFUNDED", true, "0");
        refund_no_amount.as_object_mut().unwrap().remove("Amount");
        for body in [
            Vec::new(),
            vec![0xff, 0xfe, 0x00],
            b"[1,2,3]".to_vec(),
            b"\"OK\"".to_vec(),
            b"{\"TerminalKey\":".to_vec(),
            vec![b' '; MAX_BODY_BYTES + 1],
            signed(add_card, PASSWORD),
            signed(no_status, PASSWORD),
            signed(fractional, PASSWORD),
            signed(negative, PASSWORD),
            signed(refund_no_amount, PASSWORD),
        ] {
            let got = notice_of(&t, &body).await;
            assert!(
                matches!(got, Err(Rejection::Malformed(_))),
                "{}: {got:?}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    fn order(receipt: Option<&Receipt>) -> Order<'_> {
        Order {
            payment_id: "0190f3a2-7b1c-7d4e-8f00-123456789abc",
            number: 42,
            user_id: "user-42",
            email: "u@example.com",
            amount_kopecks: 15_000,
            description: "Пополнение баланса: 1500 raits",
            return_url: "https://app.example.com/payments/return?payment_id=0190f3a2-7b1c-7d4e-8f00-123456789abc",
            webhook_url: "https://api.example.com/api/v1/payments/webhook/tbank",
            receipt,
        }
    }

    fn init_ok() -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(json!({
            "Success": true, "ErrorCode": "0", "TerminalKey": TERMINAL, "Status": "NEW",
            "PaymentId": "3093639567", "OrderId": "0190f3a2-7b1c-7d4e-8f00-123456789abc",
            "Amount": 15000, "PaymentURL": "https://pay.tbank.ru/new/abc"
        }))
    }

    async fn only_request(server: &MockServer) -> Map<String, Value> {
        let requests = server.received_requests().await.unwrap();
        assert_eq!(requests.len(), 1);
        let r = &requests[0];
        assert_eq!(r.method.as_str(), "POST");
        assert_eq!(
            r.headers.get("content-type").unwrap().to_str().unwrap(),
            "application/json"
        );
        object(serde_json::from_slice(&r.body).unwrap())
    }

    #[tokio::test]
    async fn start_sends_a_signed_init() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v2/Init"))
            .respond_with(init_ok())
            .expect(1)
            .mount(&server)
            .await;
        // A trailing slash in the setting still gives exactly one.
        let t = tbank(&format!("{}/v2/", server.uri()));
        let started = t.start(&order(None)).await.unwrap();
        assert_eq!(started.external_id, "3093639567");
        assert_eq!(started.payment_url, "https://pay.tbank.ru/new/abc");
        assert_eq!(started.provider_status, "NEW");
        assert!(started.widget.is_none());

        let body = only_request(&server).await;
        let o = order(None);
        let mut unsigned = object(json!({
            "TerminalKey": TERMINAL,
            "Amount": 15000,
            "OrderId": o.payment_id,
            "Description": o.description,
            "NotificationURL": o.webhook_url,
            "SuccessURL": o.return_url,
            "FailURL": o.return_url,
            "DATA": {"user_id": "user-42"},
        }));
        let expected_token = token(&unsigned, PASSWORD);
        unsigned.insert("Token".into(), expected_token.into());
        assert_eq!(body, unsigned);
        assert!(!String::from_utf8_lossy(&serde_json::to_vec(&body).unwrap()).contains(PASSWORD));
    }

    #[tokio::test]
    async fn start_attaches_the_receipt_outside_the_token() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v2/Init"))
            .respond_with(init_ok())
            .mount(&server)
            .await;
        let t = tbank(&format!("{}/v2", server.uri()));
        let receipt = Receipt {
            taxation: Taxation::UsnIncomeOutcome,
            vat: Vat::Vat22,
            item_name: "Пополнение баланса".into(),
        };
        t.start(&order(Some(&receipt))).await.unwrap();
        let body = only_request(&server).await;
        assert_eq!(
            body["Receipt"],
            json!({
                "Email": "u@example.com",
                "Taxation": "usn_income_outcome",
                "Items": [{
                    "Name": "Пополнение баланса",
                    "Price": 15000,
                    "Quantity": 1,
                    "Amount": 15000,
                    "Tax": "vat22",
                    "PaymentMethod": "full_prepayment",
                    "PaymentObject": "service",
                }],
            })
        );
        let mut without = body.clone();
        without.remove("Receipt");
        assert_eq!(body["Token"], token(&without, PASSWORD).as_str());
        assert_eq!(body.len(), 10);
    }

    #[tokio::test]
    async fn start_reads_a_numeric_payment_id() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v2/Init"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "Success": true, "ErrorCode": "0", "Status": "NEW",
                "PaymentId": 3093639567u64, "PaymentURL": "https://pay.tbank.ru/x"
            })))
            .mount(&server)
            .await;
        let started = tbank(&format!("{}/v2", server.uri()))
            .start(&order(None))
            .await
            .unwrap();
        assert_eq!(started.external_id, "3093639567");
    }

    async fn start_failure(response: ResponseTemplate) -> String {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v2/Init"))
            .respond_with(response)
            .mount(&server)
            .await;
        let t = tbank(&format!("{}/v2", server.uri()));
        let err = t.start(&order(None)).await.unwrap_err().0;
        assert!(!err.contains(PASSWORD), "{err}");
        err
    }

    #[tokio::test]
    async fn start_failures() {
        let refused = start_failure(ResponseTemplate::new(200).set_body_json(json!({
            "Success": false, "ErrorCode": "204", "Message": "Неверный токен",
            "Details": "Проверьте пару TerminalKey/Password"
        })))
        .await;
        assert!(
            refused.contains("204") && refused.contains("Неверный токен"),
            "{refused}"
        );
        let refused = start_failure(ResponseTemplate::new(200).set_body_json(json!({
            "Success": true, "ErrorCode": "9999", "PaymentId": "1", "PaymentURL": "https://x", "Status": "NEW"
        })))
        .await;
        assert!(refused.contains("9999"), "{refused}");
        let http =
            start_failure(ResponseTemplate::new(503).set_body_string("<html>down</html>")).await;
        assert!(http.contains("503"), "{http}");
        let http = start_failure(
            ResponseTemplate::new(400).set_body_json(json!({"Success": false, "ErrorCode": "9"})),
        )
        .await;
        assert!(http.contains("400") && http.contains("\"9\""), "{http}");
        start_failure(ResponseTemplate::new(200).set_body_string("not json")).await;
        start_failure(ResponseTemplate::new(200).set_body_json(json!([1]))).await;
        start_failure(ResponseTemplate::new(200).set_body_json(json!({
            "Success": true, "ErrorCode": "0", "Status": "NEW", "PaymentId": "1"
        })))
        .await;
        start_failure(ResponseTemplate::new(200).set_body_json(json!({
            "Success": true, "ErrorCode": "0", "Status": "NEW", "PaymentURL": "https://x"
        })))
        .await;
        start_failure(ResponseTemplate::new(200).set_body_json(json!({
            "Success": true, "ErrorCode": "0", "TerminalKey": "other", "Status": "NEW",
            "PaymentId": "1", "PaymentURL": "https://x"
        })))
        .await;
        start_failure(ResponseTemplate::new(302).insert_header("location", "https://elsewhere/"))
            .await;
    }

    #[tokio::test]
    async fn start_fails_when_the_bank_is_unreachable() {
        let server = MockServer::start().await;
        let uri = server.uri();
        drop(server);
        let err = tbank(&uri).start(&order(None)).await.unwrap_err().0;
        assert!(err.starts_with("tbank Init"), "{err}");
    }

    fn known(external_id: Option<&str>) -> Known<'_> {
        Known {
            payment_id: "0190f3a2-7b1c-7d4e-8f00-123456789abc",
            number: 42,
            external_id,
        }
    }

    async fn state_with(
        answer: ResponseTemplate,
    ) -> (Result<Option<State>, Failure>, Map<String, Value>) {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v2/GetState"))
            .respond_with(answer)
            .expect(1)
            .mount(&server)
            .await;
        let t = tbank(&format!("{}/v2", server.uri()));
        let got = t.state(known(Some("3093639567"))).await;
        (got, only_request(&server).await)
    }

    #[tokio::test]
    async fn state_asks_get_state() {
        let (got, request) = state_with(ResponseTemplate::new(200).set_body_json(json!({
            "Success": true, "ErrorCode": "0", "Message": "OK", "TerminalKey": TERMINAL,
            "Status": "CONFIRMED", "PaymentId": "3093639567", "OrderId": "topup-42-0001",
            "Amount": 15000
        })))
        .await;
        assert_eq!(
            request,
            object(json!({
                "TerminalKey": TERMINAL,
                "PaymentId": "3093639567",
                "Token": "a06a0ebb8d3672611166906222a987918dd72fc59cb425f25fb73684f4d83576"
            }))
        );
        assert_eq!(got.unwrap(), Some(expected(Event::Paid, "CONFIRMED")));
    }

    #[tokio::test]
    async fn state_without_order_id_finds_by_ours() {
        let (got, _) = state_with(ResponseTemplate::new(200).set_body_json(json!({
            "Success": true, "ErrorCode": "0", "Status": "AUTHORIZED", "PaymentId": 3093639567u64
        })))
        .await;
        assert_eq!(
            got.unwrap(),
            Some(Notice {
                payment_id: None,
                find: Find::Id("0190f3a2-7b1c-7d4e-8f00-123456789abc".into()),
                event: Event::Progress,
                amount_kopecks: None,
                currency: None,
                external_id: Some("3093639567".into()),
                account: None,
                provider_status: "AUTHORIZED".into(),
                test: false,
            })
        );
        let (got, _) = state_with(ResponseTemplate::new(200).set_body_json(json!({
            "Success": true, "ErrorCode": "0", "Status": "REJECTED", "PaymentId": "3093639567",
            "OrderId": "topup-42-0001", "Amount": 15000
        })))
        .await;
        assert_eq!(got.unwrap(), Some(expected(Event::Failed, "REJECTED")));
    }

    #[tokio::test]
    async fn state_failures() {
        for answer in [
            ResponseTemplate::new(200).set_body_json(json!({
                "Success": false, "ErrorCode": "7", "Message": "Неверный статус транзакции"
            })),
            ResponseTemplate::new(500),
            ResponseTemplate::new(404).set_body_string("nope"),
            ResponseTemplate::new(200).set_body_string("{"),
            ResponseTemplate::new(200).set_body_json(json!({"Success": true, "ErrorCode": "0"})),
            ResponseTemplate::new(200).set_body_json(json!({
                "Success": true, "ErrorCode": "0", "Status": "CONFIRMED", "Amount": "lots"
            })),
        ] {
            let (got, _) = state_with(answer).await;
            let err = got.unwrap_err().0;
            assert!(err.starts_with("tbank GetState"), "{err}");
            assert!(!err.contains(PASSWORD));
        }
    }

    #[tokio::test]
    async fn state_needs_the_payment_id() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(500))
            .expect(0)
            .mount(&server)
            .await;
        let t = tbank(&server.uri());
        assert!(t.state(known(None)).await.unwrap().is_none());
    }
}
