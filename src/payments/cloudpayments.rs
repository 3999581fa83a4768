//! CloudPayments (reference §3): a payment opened as an order (`POST /orders/create`, a hosted
//! payment page) with its JS widget's parameters beside it; notifications (Check, Pay, Fail,
//! Confirm, Refund, Cancel, one URL each) signed with base64 HMAC-SHA256 under the API secret.

use std::collections::HashMap;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Number, Value, json};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::http::{basic, read, transport};
use super::{
    Event, Failure, Find, Incoming, Known, Notice, Order, Rejection, Started, State, Taxation, Vat,
    money,
};
use crate::config::{Config, Secret};

/// The notification types we take, one per webhook URL.
const KINDS: [&str; 6] = ["check", "pay", "fail", "confirm", "refund", "cancel"];

pub struct CloudPayments {
    http: reqwest::Client,
    base_url: String,
    public_id: String,
    api_secret: Secret,
}

impl CloudPayments {
    /// `None` unless its credentials are configured.
    pub fn from_config(config: &Config, http: reqwest::Client) -> Option<CloudPayments> {
        let c = &config.cloudpayments;
        Some(CloudPayments::new(
            http,
            &c.base_url,
            c.public_id.as_deref()?,
            c.api_secret.clone()?,
        ))
    }

    fn new(
        http: reqwest::Client,
        base_url: &str,
        public_id: &str,
        api_secret: Secret,
    ) -> CloudPayments {
        CloudPayments {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            public_id: public_id.to_owned(),
            api_secret,
        }
    }

    /// Opens an order (its `Url` is a hosted payment page) and returns the widget's
    /// `pay('charge', …)` options beside it. `X-Request-ID` is our payment id, so a retried
    /// create returns the same order.
    pub async fn start(&self, order: &Order<'_>) -> Result<Started, Failure> {
        let amount = amount_number(order.amount_kopecks)
            .ok_or_else(|| Failure("cloudpayments create: amount out of range".into()))?;
        let receipt = order.receipt.map(|r| {
            json!({"CloudPayments": {"CustomerReceipt": customer_receipt(r, &amount, order.email)}})
        });
        let mut body = json!({
            "Amount": amount,
            "Currency": "RUB",
            "Description": order.description,
            "InvoiceId": order.payment_id,
            "AccountId": order.user_id,
            "Email": order.email,
            "RequireConfirmation": false,
            "SendEmail": false,
            "SuccessRedirectUrl": order.return_url,
            "FailRedirectUrl": order.return_url,
            "CultureName": "ru-RU",
        });
        let mut widget = json!({
            "publicId": self.public_id,
            "description": order.description,
            "amount": amount,
            "currency": "RUB",
            "invoiceId": order.payment_id,
            "accountId": order.user_id,
            "email": order.email,
        });
        if let Some(receipt) = receipt {
            insert(&mut body, "JsonData", receipt.clone());
            insert(&mut widget, "data", receipt);
        }
        let model = self
            .call("orders/create", Some(order.payment_id), &body)
            .await
            .map_err(|e| Failure(format!("cloudpayments create: {e}")))?
            .map_err(|message| Failure(format!("cloudpayments create: {message}")))?;
        let id = scalar(&model, "Id").filter(|s| !s.is_empty());
        let url = scalar(&model, "Url").filter(|s| !s.is_empty());
        let (Some(id), Some(url)) = (id, url) else {
            return Err(Failure(
                "cloudpayments create: answer without Model.Id or Model.Url".into(),
            ));
        };
        Ok(Started {
            external_id: id,
            payment_url: url,
            provider_status: scalar(&model, "Status").unwrap_or_else(|| "Created".into()),
            widget: Some(widget),
        })
    }

    /// Checks the HMAC over the body exactly as sent, then reads the notification of the type
    /// named by our URL path.
    pub async fn notice(&self, incoming: &Incoming<'_>) -> Result<Notice, Rejection> {
        let kind = incoming
            .kind
            .filter(|k| KINDS.contains(k))
            .ok_or_else(|| Rejection::Malformed("unknown notification type".into()))?;
        let json = is_json(incoming);
        self.verify(incoming, json)?;
        let fields = if json {
            json_fields(incoming.body)
        } else {
            form_fields(incoming.body)
        }
        .ok_or_else(|| Rejection::Malformed("unreadable body".into()))?;
        notification(kind, &fields).map_err(Rejection::Malformed)
    }

    /// Reconciliation: the last transaction of the order, found by our `InvoiceId`.
    pub async fn state(&self, known: Known<'_>) -> Result<Option<State>, Failure> {
        let body = json!({"InvoiceId": known.payment_id});
        let model = match self
            .call("v2/payments/find", None, &body)
            .await
            .map_err(|e| Failure(format!("cloudpayments find: {e}")))?
        {
            Ok(model) => model,
            Err(message) if not_found(&message) => return Ok(None),
            Err(message) => return Err(Failure(format!("cloudpayments find: {message}"))),
        };
        transaction(&model, known.payment_id)
            .map(Some)
            .map_err(|why| Failure(format!("cloudpayments find: {why}")))
    }

    /// Accepts `Content-HMAC` over the raw body or, only when that header is absent,
    /// `X-Content-HMAC` over the URL-decoded body (reference §3.4).
    fn verify(&self, incoming: &Incoming<'_>, json: bool) -> Result<(), Rejection> {
        let secret = self.api_secret.expose().as_bytes();
        if secret.is_empty() {
            return Err(Rejection::Forged("no API secret configured".into()));
        }
        let (given, message) = match incoming.headers.get("content-hmac") {
            Some(value) => (value, incoming.body.to_vec()),
            None => match incoming.headers.get("x-content-hmac") {
                // A JSON body has nothing URL-encoded: both headers sign the same bytes.
                Some(value) if json => (value, incoming.body.to_vec()),
                Some(value) => (value, url_decoded(incoming.body)),
                None => return Err(Rejection::Forged("no Content-HMAC".into())),
            },
        };
        let given = given
            .to_str()
            .ok()
            .and_then(|s| {
                base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .ok()
            })
            .ok_or_else(|| Rejection::Forged("HMAC is not base64".into()))?;
        let expected = hmac_sha256(secret, &message);
        if bool::from(expected.as_slice().ct_eq(&given)) {
            Ok(())
        } else {
            Err(Rejection::Forged("HMAC does not match".into()))
        }
    }

    /// POSTs JSON with Basic auth; `Ok(Err(message))` is CloudPayments' `Success:false`.
    async fn call(
        &self,
        method: &str,
        request_id: Option<&str>,
        body: &Value,
    ) -> Result<Result<Value, String>, String> {
        let mut request = self
            .http
            .post(format!("{}/{method}", self.base_url))
            .header(reqwest::header::AUTHORIZATION, self.authorization())
            .json(body);
        if let Some(id) = request_id {
            request = request.header("X-Request-ID", id);
        }
        let response = request.send().await.map_err(|e| transport(&e))?;
        let status = response.status();
        let answer = read(response).await?;
        if !status.is_success() {
            return Err(format!("HTTP {}", status.as_u16()));
        }
        let answer: Value =
            serde_json::from_slice(&answer).map_err(|_| "unreadable answer".to_owned())?;
        match answer.get("Success").and_then(Value::as_bool) {
            Some(true) => match answer.get("Model") {
                Some(model) if model.is_object() => Ok(Ok(model.clone())),
                _ => Err("answer without Model".into()),
            },
            Some(false) => Ok(Err(scalar(&answer, "Message")
                .map(|m| m.chars().take(200).collect())
                .unwrap_or_else(|| "Success:false".into()))),
            None => Err("answer without Success".into()),
        }
    }

    fn authorization(&self) -> String {
        basic(&self.public_id, self.api_secret.expose())
    }
}

/// `Success:false` because no payment has this `InvoiceId` (yet).
fn not_found(message: &str) -> bool {
    let message = message.to_lowercase();
    message.contains("not found") || message.contains("не найден")
}

/// Roubles as a JSON number built from the exact decimal text: whole roubles as an integer
/// (`150`), otherwise the shortest double that prints back as the same two decimals (`150.05`).
fn amount_number(kopecks: i64) -> Option<Number> {
    if kopecks < 0 {
        return None;
    }
    if kopecks % 100 == 0 {
        return Some(Number::from(kopecks / 100));
    }
    Number::from_f64(money::roubles(kopecks).parse().ok()?)
}

/// The receipt as CloudPayments takes it inside `JsonData.CloudPayments.CustomerReceipt` (and
/// the widget's `data`): one item, paid in full in advance (`method` 1), a service (`object` 4).
fn customer_receipt(receipt: &super::Receipt, amount: &Number, email: &str) -> Value {
    json!({
        "Items": [{
            "label": receipt.item_name,
            "price": amount,
            "quantity": 1,
            "amount": amount,
            "vat": vat(receipt.vat),
            "method": 1,
            "object": 4,
        }],
        "taxationSystem": taxation_system(receipt.taxation),
        "email": email,
    })
}

/// CloudPayments `vat`: the rate itself, `null` for no VAT.
fn vat(vat: Vat) -> Value {
    let rate = match vat {
        Vat::None => return Value::Null,
        Vat::Vat0 => 0,
        Vat::Vat5 => 5,
        Vat::Vat7 => 7,
        Vat::Vat10 => 10,
        Vat::Vat20 => 20,
        Vat::Vat22 => 22,
        Vat::Vat105 => 105,
        Vat::Vat107 => 107,
        Vat::Vat110 => 110,
        Vat::Vat120 => 120,
        Vat::Vat122 => 122,
    };
    json!(rate)
}

/// CloudPayments `taxationSystem` (3 was ENVD, abolished).
fn taxation_system(taxation: Taxation) -> u8 {
    match taxation {
        Taxation::Osn => 0,
        Taxation::UsnIncome => 1,
        Taxation::UsnIncomeOutcome => 2,
        Taxation::Esn => 4,
        Taxation::Patent => 5,
    }
}

/// A verified notification's fields as a notice.
fn notification(kind: &str, fields: &HashMap<String, String>) -> Result<Notice, String> {
    let field = |name: &str| fields.get(name).map(String::as_str);
    let invoice = field("InvoiceId")
        .filter(|s| !s.is_empty())
        .ok_or("no InvoiceId")?;
    let amount = field("Amount")
        .and_then(money::kopecks)
        .ok_or("no readable Amount")?;
    let status = field("Status");
    let event = match kind {
        "check" => Event::Check,
        "pay" => match status {
            Some("Completed") => Event::Paid,
            Some(_) => Event::Progress,
            None => return Err("no Status".into()),
        },
        "confirm" => Event::Paid,
        // One declined attempt: the payer may try the same order again.
        "fail" => Event::Progress,
        "cancel" => Event::Failed,
        "refund" => Event::Refunded {
            refund_id: field("TransactionId")
                .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                .ok_or("no TransactionId")?
                .to_owned(),
            amount_kopecks: amount,
        },
        _ => return Err("unknown notification type".into()),
    };
    let provider_status = match (kind, status) {
        ("refund", _) | (_, None) => kind.to_owned(),
        (_, Some(status)) => status.to_owned(),
    };
    Ok(Notice {
        payment_id: None,
        find: Find::Id(invoice.to_owned()),
        event,
        amount_kopecks: Some(amount),
        currency: field("Currency").map(str::to_owned),
        // Our stored external id is the order's, never a transaction's.
        external_id: None,
        account: field("AccountId").map(str::to_owned),
        provider_status,
        test: test_mode(field("TestMode"))?,
    })
}

/// A transaction from `v2/payments/find` as a notice.
fn transaction(model: &Value, payment_id: &str) -> Result<Notice, String> {
    let status = scalar(model, "Status").ok_or("no Status")?;
    let amount = scalar(model, "Amount")
        .as_deref()
        .and_then(money::kopecks)
        .ok_or("no readable Amount")?;
    let refunded = model.get("Refunded").and_then(Value::as_bool) == Some(true);
    let event = match status.as_str() {
        "Refunded" => refunded_event(model, amount)?,
        "Completed" if refunded => refunded_event(model, amount)?,
        "Completed" => Event::Paid,
        "Declined" | "Cancelled" => Event::Failed,
        _ => Event::Progress,
    };
    Ok(Notice {
        payment_id: None,
        find: Find::Id(scalar(model, "InvoiceId").unwrap_or_else(|| payment_id.to_owned())),
        event,
        amount_kopecks: Some(amount),
        currency: scalar(model, "Currency"),
        external_id: None,
        account: scalar(model, "AccountId"),
        provider_status: status,
        test: model.get("TestMode").and_then(Value::as_bool) == Some(true),
    })
}

/// A refund seen only through the payment: one refund id per transaction, the whole amount.
fn refunded_event(model: &Value, amount: i64) -> Result<Event, String> {
    let transaction = scalar(model, "TransactionId").ok_or("no TransactionId")?;
    Ok(Event::Refunded {
        refund_id: format!("{transaction}:refunded"),
        amount_kopecks: amount,
    })
}

/// `TestMode`: `1`/`0` in forms, `true`/`false` (or 1/0) in JSON; absent means live.
fn test_mode(value: Option<&str>) -> Result<bool, String> {
    match value {
        None | Some("0") | Some("false") | Some("False") => Ok(false),
        Some("1") | Some("true") | Some("True") => Ok(true),
        Some(_) => Err("unreadable TestMode".into()),
    }
}

fn is_json(incoming: &Incoming<'_>) -> bool {
    incoming
        .headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// A form body's fields (the first of repeated names).
fn form_fields(body: &[u8]) -> Option<HashMap<String, String>> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).ok()?;
    let mut fields = HashMap::new();
    for (name, value) in pairs {
        fields.entry(name).or_insert(value);
    }
    Some(fields)
}

/// A JSON body's scalar fields as text; numbers keep their JSON text (`150.0`).
fn json_fields(body: &[u8]) -> Option<HashMap<String, String>> {
    let Value::Object(map) = serde_json::from_slice(body).ok()? else {
        return None;
    };
    Some(
        map.iter()
            .filter_map(|(name, value)| Some((name.clone(), scalar_text(value)?)))
            .collect(),
    )
}

/// A string, number or boolean field as text.
fn scalar(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(scalar_text)
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn insert(object: &mut Value, key: &str, value: Value) {
    if let Some(map) = object.as_object_mut() {
        map.insert(key.into(), value);
    }
}

/// The whole body URL-decoded: `+` to a space, then `%XX` to its byte.
fn url_decoded(body: &[u8]) -> Vec<u8> {
    let spaced: Vec<u8> = body
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_encoding::percent_decode(&spaced).collect()
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payments::Receipt;
    use axum::http::{HeaderMap, HeaderValue, Method};
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const PUBLIC_ID: &str = "pk_test_0000000000000000000000000000";
    const SECRET: &str = "cp_test_api_secret_123";
    const AUTH: &str =
        "Basic cGtfdGVzdF8wMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwOmNwX3Rlc3RfYXBpX3NlY3JldF8xMjM=";
    const PAYMENT_ID: &str = "0190a3b2-7c4d-7e5f-8a9b-0c1d2e3f4a5b";

    const PAY_FORM: &str = "TransactionId=1234567&Amount=150.00&Currency=RUB&PaymentAmount=150.00&PaymentCurrency=RUB&DateTime=2024-05-01+12%3A34%3A56&CardFirstSix=424242&CardLastFour=4242&CardType=Visa&CardExpDate=12%2F28&TestMode=1&Status=Completed&OperationType=Payment&GatewayName=Test&InvoiceId=topup-42-0001&AccountId=user-42&Email=u%40example.com&Description=%D0%9F%D0%BE%D0%BF%D0%BE%D0%BB%D0%BD%D0%B5%D0%BD%D0%B8%D0%B5+%D0%B1%D0%B0%D0%BB%D0%B0%D0%BD%D1%81%D0%B0&Data=%7B%22user_id%22%3A42%7D";
    const PAY_FORM_DECODED: &str = "TransactionId=1234567&Amount=150.00&Currency=RUB&PaymentAmount=150.00&PaymentCurrency=RUB&DateTime=2024-05-01 12:34:56&CardFirstSix=424242&CardLastFour=4242&CardType=Visa&CardExpDate=12/28&TestMode=1&Status=Completed&OperationType=Payment&GatewayName=Test&InvoiceId=topup-42-0001&AccountId=user-42&Email=u@example.com&Description=Пополнение баланса&Data={\"user_id\":42}";
    const PAY_FORM_HMAC: &str = "TrLl78CPqum059xqeK2oHWP+MGrJksOc8nLrzqMsi30=";
    const PAY_FORM_X_HMAC: &str = "5IHdmWH0VDqs0JMck/asqLeU06NpMPrFQ7osYezmyZQ=";
    const PAY_FORM_EMPTY_SECRET_HMAC: &str = "rhIt4JtpnHCPLWmScVsjDUan0Feh4LuJQaY8AnIPcl4=";
    const CHECK_JSON: &str = r#"{"TransactionId":1234567,"Amount":150.0,"Currency":"RUB","InvoiceId":"topup-42-0001","AccountId":"user-42","Status":"Completed","OperationType":"Payment","TestMode":true}"#;
    const CHECK_JSON_HMAC: &str = "3AsOFi096+FwScCsrG0S9Jt9qAD04rytV57NUmK4RF0=";

    fn provider_with(base: &str, secret: &str) -> CloudPayments {
        CloudPayments::new(reqwest::Client::new(), base, PUBLIC_ID, Secret::new(secret))
    }

    fn provider() -> CloudPayments {
        provider_with("https://api.cloudpayments.ru", SECRET)
    }

    fn sign(secret: &str, body: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(hmac_sha256(secret.as_bytes(), body))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    async fn notice_of(
        p: &CloudPayments,
        kind: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Notice, Rejection> {
        p.notice(&Incoming {
            method: &Method::POST,
            query: None,
            headers,
            body,
            kind: Some(kind),
        })
        .await
    }

    /// A form notification signed with our secret.
    async fn form(kind: &str, body: &str) -> Result<Notice, Rejection> {
        let h = headers(&[("Content-HMAC", &sign(SECRET, body.as_bytes()))]);
        notice_of(&provider(), kind, &h, body.as_bytes()).await
    }

    fn order(receipt: Option<&Receipt>) -> Order<'_> {
        Order {
            payment_id: PAYMENT_ID,
            number: 7,
            user_id: "user-42",
            email: "u@example.com",
            amount_kopecks: 15_000,
            description: "Пополнение баланса",
            return_url: "https://app.example.com/payments/return?payment_id=x",
            webhook_url: "https://api.example.com/api/v1/payments/webhook/cloudpayments",
            receipt,
        }
    }

    fn paid_pay_form() -> Notice {
        Notice {
            payment_id: None,
            find: Find::Id("topup-42-0001".into()),
            event: Event::Paid,
            amount_kopecks: Some(15_000),
            currency: Some("RUB".into()),
            external_id: None,
            account: Some("user-42".into()),
            provider_status: "Completed".into(),
            test: true,
        }
    }

    #[test]
    fn vectors_sign_as_documented() {
        assert_eq!(sign(SECRET, PAY_FORM.as_bytes()), PAY_FORM_HMAC);
        assert_eq!(
            url_decoded(PAY_FORM.as_bytes()),
            PAY_FORM_DECODED.as_bytes()
        );
        assert_eq!(sign(SECRET, PAY_FORM_DECODED.as_bytes()), PAY_FORM_X_HMAC);
        assert_eq!(sign(SECRET, CHECK_JSON.as_bytes()), CHECK_JSON_HMAC);
        assert_eq!(sign("", PAY_FORM.as_bytes()), PAY_FORM_EMPTY_SECRET_HMAC);
        assert_eq!(basic(PUBLIC_ID, SECRET), AUTH);
    }

    #[tokio::test]
    async fn the_form_pay_vector_is_paid() {
        let h = headers(&[
            ("content-type", "application/x-www-form-urlencoded"),
            ("Content-HMAC", PAY_FORM_HMAC),
        ]);
        let notice = notice_of(&provider(), "pay", &h, PAY_FORM.as_bytes())
            .await
            .unwrap();
        assert_eq!(notice, paid_pay_form());
    }

    #[tokio::test]
    async fn x_content_hmac_signs_the_decoded_body() {
        let h = headers(&[("X-Content-HMAC", PAY_FORM_X_HMAC)]);
        let notice = notice_of(&provider(), "pay", &h, PAY_FORM.as_bytes())
            .await
            .unwrap();
        assert_eq!(notice, paid_pay_form());
        // The raw-body signature under the X- name does not pass.
        let h = headers(&[("X-Content-HMAC", PAY_FORM_HMAC)]);
        assert!(matches!(
            notice_of(&provider(), "pay", &h, PAY_FORM.as_bytes()).await,
            Err(Rejection::Forged(_))
        ));
    }

    #[tokio::test]
    async fn the_json_check_vector_is_a_check() {
        for (name, content_type) in [
            ("Content-HMAC", "application/json"),
            ("x-content-hmac", "Application/JSON; charset=utf-8"),
        ] {
            let h = headers(&[("content-type", content_type), (name, CHECK_JSON_HMAC)]);
            let notice = notice_of(&provider(), "check", &h, CHECK_JSON.as_bytes())
                .await
                .unwrap();
            assert_eq!(
                notice,
                Notice {
                    payment_id: None,
                    event: Event::Check,
                    ..paid_pay_form()
                }
            );
        }
    }

    #[tokio::test]
    async fn an_empty_secret_verifies_nothing() {
        let p = provider_with("https://api.cloudpayments.ru", "");
        let h = headers(&[("Content-HMAC", PAY_FORM_EMPTY_SECRET_HMAC)]);
        assert!(matches!(
            notice_of(&p, "pay", &h, PAY_FORM.as_bytes()).await,
            Err(Rejection::Forged(_))
        ));
        // …and our configured secret refuses that signature too.
        assert!(matches!(
            notice_of(&provider(), "pay", &h, PAY_FORM.as_bytes()).await,
            Err(Rejection::Forged(_))
        ));
    }

    #[tokio::test]
    async fn forged_signatures() {
        let p = provider();
        let body = PAY_FORM.as_bytes();
        let tampered = PAY_FORM.replace("Amount=150.00", "Amount=1500.00");
        let wrong_secret = sign("another_secret", body);
        let cases: Vec<(HeaderMap, &[u8])> = vec![
            (HeaderMap::new(), body),
            (headers(&[("Content-HMAC", "")]), body),
            (headers(&[("Content-HMAC", "not base64!")]), body),
            (headers(&[("Content-HMAC", &wrong_secret)]), body),
            (
                headers(&[("Content-HMAC", PAY_FORM_HMAC)]),
                tampered.as_bytes(),
            ),
            // A wrong Content-HMAC is not rescued by a right X-Content-HMAC.
            (
                headers(&[
                    ("Content-HMAC", &wrong_secret),
                    ("X-Content-HMAC", PAY_FORM_X_HMAC),
                ]),
                body,
            ),
            // Truncated: a prefix of the right MAC.
            (headers(&[("Content-HMAC", "TrLl78CPqum059xq")]), body),
        ];
        for (h, body) in cases {
            let rejection = notice_of(&p, "pay", &h, body).await.unwrap_err();
            assert!(
                matches!(rejection, Rejection::Forged(_)),
                "{h:?}: {rejection:?}"
            );
        }
    }

    #[tokio::test]
    async fn malformed_notifications() {
        for kind in ["recurrent", "receipt", "", "PAY"] {
            assert!(matches!(
                form(kind, PAY_FORM).await,
                Err(Rejection::Malformed(_))
            ));
        }
        let without = |name: &str| {
            PAY_FORM
                .split('&')
                .filter(|pair| !pair.starts_with(&format!("{name}=")))
                .collect::<Vec<_>>()
                .join("&")
        };
        let bodies = [
            String::new(),
            "\u{0}\u{1}garbage".to_owned(),
            "%FF%FE=%FF".to_owned(),
            without("InvoiceId"),
            without("Amount"),
            without("Status"),
            PAY_FORM.replace("Amount=150.00", "Amount=150.005"),
            PAY_FORM.replace("Amount=150.00", "Amount=-150"),
            PAY_FORM.replace("TestMode=1", "TestMode=maybe"),
        ];
        for body in &bodies {
            let rejection = form("pay", body).await.unwrap_err();
            assert!(
                matches!(rejection, Rejection::Malformed(_)),
                "{body:?}: {rejection:?}"
            );
        }
        // A JSON body that is not an object, or not JSON at all.
        for body in ["[1]", "{", "\"x\"", "{\"InvoiceId\":\"a\"}"] {
            let h = headers(&[
                ("content-type", "application/json"),
                ("Content-HMAC", &sign(SECRET, body.as_bytes())),
            ]);
            let rejection = notice_of(&provider(), "pay", &h, body.as_bytes())
                .await
                .unwrap_err();
            assert!(
                matches!(rejection, Rejection::Malformed(_)),
                "{body:?}: {rejection:?}"
            );
        }
        // Refund without its TransactionId.
        let refund = without("TransactionId");
        assert!(matches!(
            form("refund", &refund).await,
            Err(Rejection::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn each_kind_maps_to_its_event() {
        let authorized = PAY_FORM.replace("Status=Completed", "Status=Authorized");
        let declined = PAY_FORM.replace("Status=Completed", "Status=Declined");
        let live = PAY_FORM.replace("TestMode=1", "TestMode=0");
        let cases = [
            ("check", PAY_FORM.to_owned(), Event::Check, "Completed"),
            ("pay", PAY_FORM.to_owned(), Event::Paid, "Completed"),
            ("pay", authorized.clone(), Event::Progress, "Authorized"),
            ("confirm", PAY_FORM.to_owned(), Event::Paid, "Completed"),
            ("fail", declined, Event::Progress, "Declined"),
            ("cancel", authorized, Event::Failed, "Authorized"),
            (
                "refund",
                live.clone(),
                Event::Refunded {
                    refund_id: "1234567".into(),
                    amount_kopecks: 15_000,
                },
                "refund",
            ),
        ];
        for (kind, body, event, status) in cases {
            let notice = form(kind, &body).await.unwrap();
            assert_eq!(notice.event, event, "{kind}");
            assert_eq!(notice.provider_status, status, "{kind}");
            assert_eq!(notice.find, Find::Id("topup-42-0001".into()));
            assert_eq!(notice.external_id, None);
            assert_eq!(notice.amount_kopecks, Some(15_000));
        }
        assert!(!form("pay", &live).await.unwrap().test);
    }

    #[tokio::test]
    async fn json_test_mode_and_amounts() {
        for (test_mode, expected) in [("true", true), ("false", false), ("1", true), ("0", false)] {
            let body = format!(
                r#"{{"TransactionId":7,"Amount":99.9,"Currency":"RUB","InvoiceId":"x","Status":"Completed","TestMode":{test_mode}}}"#
            );
            let h = headers(&[
                ("content-type", "application/json"),
                ("Content-HMAC", &sign(SECRET, body.as_bytes())),
            ]);
            let notice = notice_of(&provider(), "pay", &h, body.as_bytes())
                .await
                .unwrap();
            assert_eq!(notice.test, expected);
            assert_eq!(notice.amount_kopecks, Some(9_990));
            assert_eq!(notice.account, None);
        }
    }

    #[test]
    fn amounts_are_json_numbers_from_exact_text() {
        assert_eq!(
            serde_json::to_string(&amount_number(15_000)).unwrap(),
            "150"
        );
        assert_eq!(
            serde_json::to_string(&amount_number(15_005)).unwrap(),
            "150.05"
        );
        assert_eq!(serde_json::to_string(&amount_number(10)).unwrap(), "0.1");
        assert_eq!(amount_number(-1), None);
    }

    #[test]
    fn receipt_codes() {
        let vats: Vec<Value> = Vat::ALL.into_iter().map(vat).collect();
        assert_eq!(
            vats,
            [
                Value::Null,
                json!(0),
                json!(5),
                json!(7),
                json!(10),
                json!(20),
                json!(22),
                json!(105),
                json!(107),
                json!(110),
                json!(120),
                json!(122)
            ]
        );
        let taxes: Vec<u8> = Taxation::ALL.into_iter().map(taxation_system).collect();
        assert_eq!(taxes, [0, 1, 2, 4, 5]);
    }

    #[test]
    fn from_config_needs_both_credentials() {
        let mut config = Config::default();
        assert!(CloudPayments::from_config(&config, reqwest::Client::new()).is_none());
        config.cloudpayments.public_id = Some(PUBLIC_ID.into());
        assert!(CloudPayments::from_config(&config, reqwest::Client::new()).is_none());
        config.cloudpayments.api_secret = Some(Secret::new(SECRET));
        let p = CloudPayments::from_config(&config, reqwest::Client::new()).unwrap();
        assert_eq!(p.base_url, "https://api.cloudpayments.ru");
    }

    async fn created(server: &MockServer) {
        Mock::given(method("POST"))
            .and(path("/orders/create"))
            .and(header("Authorization", AUTH))
            .and(header("X-Request-ID", PAYMENT_ID))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "Success": true, "Message": null,
                "Model": {"Id": "f2K8LV6reGE9WBFn", "Number": 61, "Amount": 150.0,
                          "Currency": "RUB", "Status": "Created", "StatusCode": 0,
                          "Url": "https://orders.cloudpayments.ru/d/f2K8LV6reGE9WBFn"}
            })))
            .expect(1)
            .mount(server)
            .await;
    }

    #[tokio::test]
    async fn start_opens_an_order_without_receipt() {
        let server = MockServer::start().await;
        created(&server).await;
        let p = provider_with(&format!("{}/", server.uri()), SECRET);
        let started = p.start(&order(None)).await.unwrap();
        assert_eq!(started.external_id, "f2K8LV6reGE9WBFn");
        assert_eq!(
            started.payment_url,
            "https://orders.cloudpayments.ru/d/f2K8LV6reGE9WBFn"
        );
        assert_eq!(started.provider_status, "Created");
        assert_eq!(
            started.widget,
            Some(json!({
                "publicId": PUBLIC_ID,
                "description": "Пополнение баланса",
                "amount": 150,
                "currency": "RUB",
                "invoiceId": PAYMENT_ID,
                "accountId": "user-42",
                "email": "u@example.com"
            }))
        );
        let requests = server.received_requests().await.unwrap();
        let body: Value = serde_json::from_slice(&requests[0].body).unwrap();
        assert_eq!(
            body,
            json!({
                "Amount": 150,
                "Currency": "RUB",
                "Description": "Пополнение баланса",
                "InvoiceId": PAYMENT_ID,
                "AccountId": "user-42",
                "Email": "u@example.com",
                "RequireConfirmation": false,
                "SendEmail": false,
                "SuccessRedirectUrl": "https://app.example.com/payments/return?payment_id=x",
                "FailRedirectUrl": "https://app.example.com/payments/return?payment_id=x",
                "CultureName": "ru-RU"
            })
        );
    }

    #[tokio::test]
    async fn start_attaches_the_receipt_to_order_and_widget() {
        let server = MockServer::start().await;
        created(&server).await;
        let receipt = Receipt {
            taxation: Taxation::Patent,
            vat: Vat::None,
            item_name: "Райты".into(),
        };
        let p = provider_with(&server.uri(), SECRET);
        let mut o = order(Some(&receipt));
        o.amount_kopecks = 15_050;
        let started = p.start(&o).await.unwrap();
        let expected = json!({"CloudPayments": {"CustomerReceipt": {
            "Items": [{"label": "Райты", "price": 150.5, "quantity": 1, "amount": 150.5,
                       "vat": null, "method": 1, "object": 4}],
            "taxationSystem": 5,
            "email": "u@example.com"
        }}});
        let requests = server.received_requests().await.unwrap();
        let body: Value = serde_json::from_slice(&requests[0].body).unwrap();
        assert_eq!(body["JsonData"], expected);
        assert_eq!(body["Amount"], json!(150.5));
        let widget = started.widget.unwrap();
        assert_eq!(widget["data"], expected);
        assert_eq!(widget["amount"], json!(150.5));
    }

    #[tokio::test]
    async fn start_failures() {
        let server = MockServer::start().await;
        let p = provider_with(&server.uri(), SECRET);
        let answers = [
            ResponseTemplate::new(200)
                .set_body_json(json!({"Success": false, "Message": "Amount is invalid"})),
            ResponseTemplate::new(401),
            ResponseTemplate::new(500).set_body_string("oops"),
            ResponseTemplate::new(200).set_body_string("<html>"),
            ResponseTemplate::new(200)
                .set_body_json(json!({"Success": true, "Model": {"Id": "x"}})),
            ResponseTemplate::new(200).set_body_json(json!({"Success": true})),
            ResponseTemplate::new(200).set_body_json(json!({"Model": {"Id": "x", "Url": "y"}})),
        ];
        for answer in answers {
            server.reset().await;
            Mock::given(method("POST"))
                .respond_with(answer)
                .mount(&server)
                .await;
            let Failure(message) = p.start(&order(None)).await.unwrap_err();
            assert!(!message.contains(SECRET), "{message}");
        }
        server.reset().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"Success": false, "Message": "Amount is invalid"})),
            )
            .mount(&server)
            .await;
        let Failure(message) = p.start(&order(None)).await.unwrap_err();
        assert!(message.contains("Amount is invalid"), "{message}");
        drop(server);
        assert!(p.start(&order(None)).await.is_err());
    }

    fn found(model: Value) -> ResponseTemplate {
        ResponseTemplate::new(200)
            .set_body_json(json!({"Success": true, "Message": null, "Model": model}))
    }

    fn transaction_model(status: &str, refunded: bool) -> Value {
        json!({"TransactionId": 1234567, "Amount": 150.0, "Currency": "RUB",
               "InvoiceId": PAYMENT_ID, "AccountId": "user-42", "Status": status,
               "StatusCode": 3, "TestMode": true, "Refunded": refunded})
    }

    #[tokio::test]
    async fn state_finds_the_transaction_by_invoice() {
        let server = MockServer::start().await;
        let p = provider_with(&server.uri(), SECRET);
        let known = Known {
            payment_id: PAYMENT_ID,
            number: 7,
            external_id: Some("f2K8LV6reGE9WBFn"),
        };
        let refunded = Event::Refunded {
            refund_id: "1234567:refunded".into(),
            amount_kopecks: 15_000,
        };
        for (status, was_refunded, event) in [
            ("Completed", false, Event::Paid),
            ("Completed", true, refunded.clone()),
            ("Refunded", false, refunded),
            ("Declined", false, Event::Failed),
            ("Cancelled", false, Event::Failed),
            ("Authorized", false, Event::Progress),
            ("AwaitingAuthentication", false, Event::Progress),
        ] {
            server.reset().await;
            Mock::given(method("POST"))
                .and(path("/v2/payments/find"))
                .and(header("Authorization", AUTH))
                .respond_with(found(transaction_model(status, was_refunded)))
                .expect(1)
                .mount(&server)
                .await;
            let state = p.state(known).await.unwrap().unwrap();
            assert_eq!(
                state,
                Notice {
                    payment_id: None,
                    find: Find::Id(PAYMENT_ID.into()),
                    event,
                    amount_kopecks: Some(15_000),
                    currency: Some("RUB".into()),
                    external_id: None,
                    account: Some("user-42".into()),
                    provider_status: status.into(),
                    test: true,
                }
            );
            let requests = server.received_requests().await.unwrap();
            let body: Value = serde_json::from_slice(&requests[0].body).unwrap();
            assert_eq!(body, json!({"InvoiceId": PAYMENT_ID}));
        }

        for message in ["Not found", "Платеж не найден"] {
            server.reset().await;
            Mock::given(method("POST"))
                .respond_with(
                    ResponseTemplate::new(200)
                        .set_body_json(json!({"Success": false, "Message": message})),
                )
                .mount(&server)
                .await;
            assert!(p.state(known).await.unwrap().is_none(), "{message}");
        }

        for answer in [
            ResponseTemplate::new(200)
                .set_body_json(json!({"Success": false, "Message": "Access denied"})),
            ResponseTemplate::new(500),
            ResponseTemplate::new(200).set_body_string("garbage"),
            found(json!({"Status": "Completed"})),
            found(json!({"Status": "Completed", "Amount": "abc"})),
        ] {
            server.reset().await;
            Mock::given(method("POST"))
                .respond_with(answer)
                .mount(&server)
                .await;
            assert!(p.state(known).await.is_err());
        }
    }
}
