//! A T-Bank `CONFIRMED` notification signed with the terminal password, as T-Bank sends it;
//! shared by the benchmarks that pay (`#[path]`-included: examples have no common crate).

use serde_json::{Value, json};

pub fn confirmed(
    terminal: &str,
    password: &str,
    order_id: &str,
    payment_id: u64,
    amount_kopecks: i64,
) -> Value {
    let mut body = json!({
        "TerminalKey": terminal, "OrderId": order_id, "Success": true, "Status": "CONFIRMED",
        "PaymentId": payment_id, "ErrorCode": "0", "Amount": amount_kopecks,
        "CardId": 123456789, "Pan": "430000******0777", "ExpDate": "1230",
    });
    let token = match &body {
        Value::Object(fields) => easy_writer::payments::tbank::token(fields, password),
        _ => String::new(),
    };
    body["Token"] = token.into();
    body
}
