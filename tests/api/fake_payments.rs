//! Fake payment providers on loopback (their APIs as documented, with state a test can change)
//! and signers written from the providers' documentation, independent of the server's code;
//! each signer is checked against the reference vectors below before it signs anything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use hmac::{Hmac, Mac};
use md5::Md5;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub const YK_SHOP: &str = "123456";
pub const YK_SECRET: &str = "test_SecretKey_XYZ";
pub const RK_LOGIN: &str = "demo_shop";
pub const RK_PASS1: &str = "pass1_TEST_abc";
pub const RK_PASS2: &str = "pass2_TEST_xyz";
pub const CP_PUBLIC: &str = "pk_test_0000000000000000000000000000";
pub const CP_SECRET: &str = "cp_test_api_secret_123";
pub const TB_TERMINAL: &str = "1700000000000DEMO";
pub const TB_PASSWORD: &str = "TestPassword_123";

/// Every provider configured with the reference's invented credentials.
pub fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("YOOKASSA_SHOP_ID", YK_SHOP),
        ("YOOKASSA_SECRET_KEY", YK_SECRET),
        ("ROBOKASSA_MERCHANT_LOGIN", RK_LOGIN),
        ("ROBOKASSA_PASSWORD1", RK_PASS1),
        ("ROBOKASSA_PASSWORD2", RK_PASS2),
        ("CLOUDPAYMENTS_PUBLIC_ID", CP_PUBLIC),
        ("CLOUDPAYMENTS_API_SECRET", CP_SECRET),
        ("TBANK_TERMINAL_KEY", TB_TERMINAL),
        ("TBANK_PASSWORD", TB_PASSWORD),
    ]
}

// ---- signers ----

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Robokassa: MD5 hex of the colon-joined parts.
pub fn robokassa_md5(parts: &[&str]) -> String {
    hex(&Md5::digest(parts.join(":").as_bytes()))
}

/// T-Bank Token: root scalars except `Token` plus `Password`, sorted by key, values joined,
/// SHA-256 hex.
pub fn tbank_token(body: &Value, password: &str) -> String {
    let mut pairs: Vec<(String, String)> = body
        .as_object()
        .expect("object")
        .iter()
        .filter(|(k, _)| k.as_str() != "Token")
        .filter_map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some((k.clone(), text))
        })
        .collect();
    pairs.push(("Password".into(), password.into()));
    pairs.sort();
    let joined: String = pairs.into_iter().map(|(_, v)| v).collect();
    hex(&Sha256::digest(joined.as_bytes()))
}

/// CloudPayments `Content-HMAC`: base64 HMAC-SHA256 of the raw body.
pub fn cloudpayments_hmac(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[test]
fn the_test_signers_reproduce_the_reference_vectors() {
    assert_eq!(
        robokassa_md5(&[
            "100.00",
            "42",
            RK_PASS2,
            "Shp_credits=1000",
            "Shp_user_id=7"
        ]),
        "0771b7fb05a786eda2cfcc497467d981"
    );
    assert_eq!(
        robokassa_md5(&["100.000000", "42", RK_PASS2]),
        "e81f56ab641b97cf73228ca1a40c4b3c"
    );
    let confirmed = json!({
        "TerminalKey": TB_TERMINAL, "OrderId": "topup-42-0001", "Success": true,
        "Status": "CONFIRMED", "PaymentId": 3093639567u64, "ErrorCode": "0", "Amount": 15000,
        "CardId": 123456789, "Pan": "430000******0777", "ExpDate": "1230",
        "Data": {"topup_id": "topup-42-0001"},
    });
    assert_eq!(
        tbank_token(&confirmed, TB_PASSWORD),
        "378433b581b9e2a9f4b5facfca63119f42da47710477beea3e29a0a680afdade"
    );
    let form = "TransactionId=1234567&Amount=150.00&Currency=RUB&PaymentAmount=150.00&PaymentCurrency=RUB&DateTime=2024-05-01+12%3A34%3A56&CardFirstSix=424242&CardLastFour=4242&CardType=Visa&CardExpDate=12%2F28&TestMode=1&Status=Completed&OperationType=Payment&GatewayName=Test&InvoiceId=topup-42-0001&AccountId=user-42&Email=u%40example.com&Description=%D0%9F%D0%BE%D0%BF%D0%BE%D0%BB%D0%BD%D0%B5%D0%BD%D0%B8%D0%B5+%D0%B1%D0%B0%D0%BB%D0%B0%D0%BD%D1%81%D0%B0&Data=%7B%22user_id%22%3A42%7D";
    assert_eq!(
        cloudpayments_hmac(CP_SECRET, form.as_bytes()),
        "TrLl78CPqum059xqeK2oHWP+MGrJksOc8nLrzqMsi30="
    );
}

// ---- fake APIs ----

/// Payments a fake provider holds, by its id.
#[derive(Default)]
pub struct Ledger {
    next: u64,
    /// id → the payment object the fake answers with.
    pub payments: HashMap<String, Value>,
    /// Answer every create with this status and body instead (a provider that is down).
    pub broken: Option<(u16, String)>,
}

pub type Shared = Arc<Mutex<Ledger>>;

fn json_body(req: &Request) -> Value {
    serde_json::from_slice(&req.body).unwrap_or(Value::Null)
}

fn broken(state: &Shared) -> Option<ResponseTemplate> {
    state
        .lock()
        .unwrap()
        .broken
        .clone()
        .map(|(status, body)| ResponseTemplate::new(status).set_body_string(body))
}

struct YkCreate(Shared);
impl Respond for YkCreate {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        if let Some(r) = broken(&self.0) {
            return r;
        }
        let body = json_body(req);
        let mut ledger = self.0.lock().unwrap();
        ledger.next += 1;
        let id = format!(
            "2f0c{:04}-000f-5000-8000-1d0a4b1c{:04}",
            ledger.next, ledger.next
        );
        let payment = json!({
            "id": id, "status": "pending", "paid": false, "test": true,
            "amount": body["amount"], "description": body["description"],
            "metadata": body["metadata"], "created_at": "2026-11-27T10:00:00.000Z",
            "confirmation": {"type": "redirect",
                "confirmation_url": format!("https://yoomoney.ru/checkout/payments/v2/contract?orderId={id}")},
            "recipient": {"account_id": YK_SHOP, "gateway_id": "1"}, "refundable": false,
        });
        ledger.payments.insert(id, payment.clone());
        ResponseTemplate::new(200).set_body_json(payment)
    }
}

struct YkGet(Shared);
impl Respond for YkGet {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let id = req.url.path().rsplit('/').next().unwrap_or_default();
        match self.0.lock().unwrap().payments.get(id) {
            Some(p) => ResponseTemplate::new(200).set_body_json(p),
            None => ResponseTemplate::new(404).set_body_json(json!({
                "type": "error", "id": "e1", "code": "not_found",
                "description": "Payment not found or forbidden", "parameter": "payment_id"})),
        }
    }
}

/// YooKassa API v3: create and get payments.
pub async fn yookassa(server: &MockServer) -> Shared {
    let state = Shared::default();
    Mock::given(method("POST"))
        .and(path("/payments"))
        .respond_with(YkCreate(state.clone()))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path_regex("^/payments/[^/]+$"))
        .respond_with(YkGet(state.clone()))
        .mount(server)
        .await;
    state
}

/// Sets fields of a fake payment (e.g. `{"status":"succeeded","paid":true}`).
/// The provider's id of the one payment the fake holds (the test opened exactly one).
pub fn only_id(state: &Shared) -> String {
    let ledger = state.lock().unwrap();
    assert_eq!(ledger.payments.len(), 1, "the fake holds one payment");
    ledger.payments.keys().next().unwrap().clone()
}

pub fn update(state: &Shared, id: &str, fields: Value) {
    let mut ledger = state.lock().unwrap();
    let payment = ledger.payments.get_mut(id).expect("fake payment");
    for (k, v) in fields.as_object().expect("object") {
        payment[k] = v.clone();
    }
}

struct TbInit(Shared);
impl Respond for TbInit {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        if let Some(r) = broken(&self.0) {
            return r;
        }
        let body = json_body(req);
        if body["Token"].as_str() != Some(&tbank_token(&body, TB_PASSWORD)) {
            return ResponseTemplate::new(200).set_body_json(json!({
                "Success": false, "ErrorCode": "204", "Message": "Неверный токен",
                "Details": "", "TerminalKey": TB_TERMINAL}));
        }
        let mut ledger = self.0.lock().unwrap();
        ledger.next += 1;
        let id = (3_093_639_500 + ledger.next).to_string();
        let state = json!({
            "TerminalKey": TB_TERMINAL, "Amount": body["Amount"], "OrderId": body["OrderId"],
            "Success": true, "Status": "NEW", "PaymentId": id, "ErrorCode": "0",
            "PaymentURL": format!("https://securepayments.tinkoff.ru/{id}"),
        });
        ledger.payments.insert(id, state.clone());
        ResponseTemplate::new(200).set_body_json(state)
    }
}

struct TbGetState(Shared);
impl Respond for TbGetState {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body = json_body(req);
        if body["Token"].as_str() != Some(&tbank_token(&body, TB_PASSWORD)) {
            return ResponseTemplate::new(200).set_body_json(json!({
                "Success": false, "ErrorCode": "204", "Message": "Неверный токен"}));
        }
        let id = match &body["PaymentId"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match self.0.lock().unwrap().payments.get(&id) {
            Some(p) => {
                let mut answer = p.clone();
                answer.as_object_mut().unwrap().remove("PaymentURL");
                ResponseTemplate::new(200).set_body_json(answer)
            }
            None => ResponseTemplate::new(200).set_body_json(json!({
                "Success": false, "ErrorCode": "7", "Message": "Неверный статус транзакции",
                "TerminalKey": TB_TERMINAL})),
        }
    }
}

/// T-Bank eacq v2: Init (checks the Token) and GetState.
pub async fn tbank(server: &MockServer) -> Shared {
    let state = Shared::default();
    Mock::given(method("POST"))
        .and(path("/Init"))
        .respond_with(TbInit(state.clone()))
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path("/GetState"))
        .respond_with(TbGetState(state.clone()))
        .mount(server)
        .await;
    state
}

/// A T-Bank notification for a fake payment, signed (`Success` and `Status` as given).
pub fn tbank_notification(state: &Shared, payment_id: &str, status: &str, success: bool) -> Value {
    let ledger = state.lock().unwrap();
    let p = &ledger.payments[payment_id];
    let mut body = json!({
        "TerminalKey": TB_TERMINAL, "OrderId": p["OrderId"], "Success": success,
        "Status": status, "PaymentId": payment_id.parse::<u64>().unwrap(), "ErrorCode": "0",
        "Amount": p["Amount"], "CardId": 123456789, "Pan": "430000******0777",
        "ExpDate": "1230",
    });
    body["Token"] = tbank_token(&body, TB_PASSWORD).into();
    body
}

struct CpCreate(Shared);
impl Respond for CpCreate {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        if let Some(r) = broken(&self.0) {
            return r;
        }
        let body = json_body(req);
        let mut ledger = self.0.lock().unwrap();
        ledger.next += 1;
        let id = format!("f2K8LV6reGE9WBFn{:04}", ledger.next);
        let invoice = body["InvoiceId"].as_str().unwrap_or_default().to_owned();
        let transaction = 900_000 + ledger.next;
        ledger.payments.insert(
            invoice,
            json!({"Amount": body["Amount"], "Status": "AwaitingAuthentication",
                   "InvoiceId": body["InvoiceId"], "AccountId": body["AccountId"],
                   "Currency": "RUB", "TransactionId": transaction, "TestMode": true}),
        );
        ResponseTemplate::new(200).set_body_json(json!({
            "Success": true, "Message": null,
            "Model": {"Id": id, "Number": ledger.next, "Amount": body["Amount"],
                      "Currency": "RUB", "Url": format!("https://orders.cloudpayments.ru/d/{id}"),
                      "Status": "Created"}}))
    }
}

struct CpFind(Shared);
impl Respond for CpFind {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let invoice = json_body(req)["InvoiceId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match self.0.lock().unwrap().payments.get(&invoice) {
            Some(p) => ResponseTemplate::new(200)
                .set_body_json(json!({"Success": true, "Message": null, "Model": p})),
            None => ResponseTemplate::new(200)
                .set_body_json(json!({"Success": false, "Message": "Not found", "Model": null})),
        }
    }
}

/// CloudPayments: orders/create and v2/payments/find (state kept by `InvoiceId`).
pub async fn cloudpayments(server: &MockServer) -> Shared {
    let state = Shared::default();
    Mock::given(method("POST"))
        .and(path("/orders/create"))
        .respond_with(CpCreate(state.clone()))
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v2/payments/find"))
        .respond_with(CpFind(state.clone()))
        .mount(server)
        .await;
    state
}

/// A CloudPayments notification body (form-urlencoded, as CloudPayments sends by default).
pub fn cloudpayments_form(fields: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(fields).unwrap()
}
