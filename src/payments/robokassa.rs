//! Robokassa: a payment link signed with Password #1 (no API call to start), and the ResultURL
//! notification signed with Password #2 (reference §2).
//!
//! Only the password pair of the configured mode is held: in test mode the test pair, else the
//! live pair, so a notification signed with the other pair is forged. Signatures are taken over
//! the strings exactly as sent (`OutSum` may arrive as `100.000000`); the hex is compared in
//! constant time, ignoring case. Reconciliation asks `OpStateExt`, the XML status service.

use md5::Md5;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha384, Sha512};
use subtle::ConstantTimeEq;

use super::{
    Event, Failure, Find, Incoming, Known, Notice, Order, Receipt, Rejection, Started, State, money,
};
use crate::config::{Config, Secret};

/// Our cross-check parameter: the payment's UUID, echoed back and covered by both signatures.
const SHP_PAYMENT_ID: &str = "Shp_payment_id";

/// A ResultURL call is a handful of short parameters; anything far larger is not Robokassa.
const MAX_NOTICE_BYTES: usize = 64 * 1024;

/// What `Receipt` is escaped with before it is signed: everything but `A–Z a–z 0–9 - _ . ~`
/// (Python's `quote(safe="")`; the reference vector's encoding).
const RECEIPT_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The shop's hash algorithm (its technical settings; `[robokassa] hash`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Md5,
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn parse(s: &str) -> Option<Hash> {
        match s {
            "md5" => Some(Hash::Md5),
            "sha1" => Some(Hash::Sha1),
            "sha256" => Some(Hash::Sha256),
            "sha384" => Some(Hash::Sha384),
            "sha512" => Some(Hash::Sha512),
            _ => None,
        }
    }

    /// Lowercase hex of the digest of `text`'s UTF-8 bytes.
    fn hex(self, text: &str) -> String {
        let bytes = text.as_bytes();
        match self {
            Hash::Md5 => hex(&Md5::digest(bytes)),
            Hash::Sha1 => hex(&Sha1::digest(bytes)),
            Hash::Sha256 => hex(&Sha256::digest(bytes)),
            Hash::Sha384 => hex(&Sha384::digest(bytes)),
            Hash::Sha512 => hex(&Sha512::digest(bytes)),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `Shp_name=value` pairs as the signature wants them: after the password, sorted byte-wise as
/// whole `name=value` strings (the official SDK's PHP `sort`), each prefixed with `:`.
fn shp_suffix(shp: &[(&str, &str)]) -> String {
    let mut pairs: Vec<String> = shp.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.iter().map(|p| format!(":{p}")).collect()
}

/// `MerchantLogin:OutSum:InvId[:Receipt]:Password1[:Shp_…]`, `receipt` already URL-encoded.
fn link_signature(
    hash: Hash,
    login: &str,
    out_sum: &str,
    inv_id: &str,
    receipt: Option<&str>,
    password1: &str,
    shp: &[(&str, &str)],
) -> String {
    let receipt = receipt.map(|r| format!(":{r}")).unwrap_or_default();
    hash.hex(&format!(
        "{login}:{out_sum}:{inv_id}{receipt}:{password1}{}",
        shp_suffix(shp)
    ))
}

/// `OutSum:InvId:Password2[:Shp_…]` over the received strings.
fn result_signature(
    hash: Hash,
    out_sum: &str,
    inv_id: &str,
    password2: &str,
    shp: &[(&str, &str)],
) -> String {
    hash.hex(&format!(
        "{out_sum}:{inv_id}:{password2}{}",
        shp_suffix(shp)
    ))
}

/// The receipt JSON (reference §5): one service item paid in full, the order's amount.
fn receipt_json(receipt: &Receipt, amount_kopecks: i64) -> String {
    // Built by hand so `sum` is the exact decimal text ("150.00"), never a float rendering.
    let name = serde_json::Value::String(receipt.item_name.clone());
    format!(
        r#"{{"sno":"{}","items":[{{"name":{name},"quantity":1,"sum":{},"payment_method":"full_payment","payment_object":"service","tax":"{}"}}]}}"#,
        receipt.taxation.as_str(),
        money::roubles(amount_kopecks),
        receipt.vat.as_str(),
    )
}

/// The form `Receipt` is signed in (and sent, encoded once more by the query string).
fn receipt_encoded(json: &str) -> String {
    utf8_percent_encode(json, RECEIPT_ESCAPE).to_string()
}

pub struct Robokassa {
    login: String,
    password1: Secret,
    password2: Secret,
    test: bool,
    hash: Hash,
    payment_url: String,
    http: reqwest::Client,
}

impl Robokassa {
    /// `None` unless the merchant login and the password pair of the configured mode are set.
    pub fn from_config(config: &Config, http: reqwest::Client) -> Option<Robokassa> {
        let c = &config.robokassa;
        let (password1, password2) = if c.is_test {
            (c.test_password1.as_ref()?, c.test_password2.as_ref()?)
        } else {
            (c.password1.as_ref()?, c.password2.as_ref()?)
        };
        Some(Robokassa {
            login: c.merchant_login.clone()?,
            password1: password1.clone(),
            password2: password2.clone(),
            test: c.is_test,
            hash: Hash::parse(&c.hash)?,
            payment_url: c.payment_url.clone(),
            http,
        })
    }

    /// Builds the signed payment link on `payment_url`; no HTTP call. The external id is our
    /// number (`InvId`) as text.
    pub async fn start(&self, order: &Order<'_>) -> Result<Started, Failure> {
        let mut url = reqwest::Url::parse(&self.payment_url)
            .map_err(|e| Failure(format!("robokassa: payment_url is not a URL: {e}")))?;
        let out_sum = money::roubles(order.amount_kopecks);
        let inv_id = order.number.to_string();
        let receipt = order
            .receipt
            .map(|r| receipt_encoded(&receipt_json(r, order.amount_kopecks)));
        let signature = link_signature(
            self.hash,
            &self.login,
            &out_sum,
            &inv_id,
            receipt.as_deref(),
            self.password1.expose(),
            &[(SHP_PAYMENT_ID, order.payment_id)],
        );
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("MerchantLogin", &self.login)
                .append_pair("OutSum", &out_sum)
                .append_pair("InvId", &inv_id)
                .append_pair("Description", order.description);
            if let Some(receipt) = &receipt {
                q.append_pair("Receipt", receipt);
            }
            q.append_pair("SignatureValue", &signature)
                .append_pair("Culture", "ru")
                .append_pair("Encoding", "utf-8")
                .append_pair("Email", order.email);
            if self.test {
                q.append_pair("IsTest", "1");
            }
            q.append_pair(SHP_PAYMENT_ID, order.payment_id);
        }
        Ok(Started {
            external_id: inv_id,
            payment_url: url.into(),
            provider_status: "created".into(),
            widget: None,
        })
    }

    /// Reads a ResultURL call (GET query or POST form; the body wins when both are present).
    /// A valid one always means paid. `Shp_payment_id` is covered by the signature but not
    /// reported: [`Notice`] has no field for it, so the payment is found by `InvId`.
    pub async fn notice(&self, incoming: &Incoming<'_>) -> Result<Notice, Rejection> {
        let raw: &[u8] = if !incoming.body.is_empty() {
            incoming.body
        } else {
            incoming.query.unwrap_or_default().as_bytes()
        };
        if raw.len() > MAX_NOTICE_BYTES {
            return Err(Rejection::Malformed("ResultURL call too large".into()));
        }
        let params: Vec<(String, String)> = serde_urlencoded::from_bytes(raw)
            .map_err(|_| Rejection::Malformed("not a URL-encoded form".into()))?;
        let mut seen = std::collections::HashSet::new();
        if let Some((name, _)) = params
            .iter()
            .find(|(name, _)| !seen.insert(name.to_ascii_lowercase()))
        {
            return Err(Rejection::Malformed(format!("parameter {name} repeated")));
        }
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let out_sum = get("OutSum").ok_or_else(|| Rejection::Malformed("no OutSum".into()))?;
        let inv_id = get("InvId").ok_or_else(|| Rejection::Malformed("no InvId".into()))?;
        let received =
            get("SignatureValue").ok_or_else(|| Rejection::Forged("no SignatureValue".into()))?;
        let shp: Vec<(&str, &str)> = params
            .iter()
            .filter(|(k, _)| k.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("shp_")))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let expected = result_signature(self.hash, out_sum, inv_id, self.password2.expose(), &shp);
        let received = received.to_ascii_lowercase();
        if !bool::from(expected.as_bytes().ct_eq(received.as_bytes())) {
            return Err(Rejection::Forged("SignatureValue does not match".into()));
        }
        let number: i64 = inv_id
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| Rejection::Malformed("InvId is not a positive integer".into()))?;
        let amount = money::kopecks(out_sum)
            .ok_or_else(|| Rejection::Malformed("OutSum is not an amount".into()))?;
        Ok(Notice {
            // Signed with the rest: the payment this number was given to.
            payment_id: get("Shp_payment_id").map(str::to_owned),
            find: Find::Number(number),
            event: Event::Paid,
            amount_kopecks: Some(amount),
            currency: None,
            external_id: Some(inv_id.to_owned()),
            account: None,
            provider_status: "paid".into(),
            test: get("IsTest") == Some("1"),
        })
    }

    /// Asks `OpStateExt` (XML, signed `MerchantLogin:InvoiceID:Password2`) on the origin of
    /// `payment_url`. `Ok(None)` while Robokassa has no operation for our number (Result
    /// Code 3: the payer has not reached the form yet).
    pub async fn state(&self, known: Known<'_>) -> Result<Option<State>, Failure> {
        let inv_id = known.number.to_string();
        let mut url = reqwest::Url::parse(&self.payment_url)
            .and_then(|u| u.join(OP_STATE_PATH))
            .map_err(|e| Failure(format!("robokassa: payment_url is not a URL: {e}")))?;
        let signature = self.hash.hex(&format!(
            "{}:{inv_id}:{}",
            self.login,
            self.password2.expose()
        ));
        url.query_pairs_mut()
            .append_pair("MerchantLogin", &self.login)
            .append_pair("InvoiceID", &inv_id)
            .append_pair("Signature", &signature);
        // Errors drop the URL: it carries the signature.
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| Failure(format!("robokassa OpStateExt: {}", e.without_url())))?;
        let status = response.status();
        if !status.is_success() {
            return Err(Failure(format!("robokassa OpStateExt: HTTP {status}")));
        }
        let bytes = super::http::read(response)
            .await
            .map_err(|e| Failure(format!("robokassa OpStateExt: {e}")))?;
        let xml = std::str::from_utf8(&bytes)
            .map_err(|_| Failure("robokassa OpStateExt: answer is not UTF-8".into()))?;
        let unreadable =
            |what: &str| Failure(format!("robokassa OpStateExt: no {what} in the answer"));
        let result = element(xml, &["Result", "Code"]).ok_or_else(|| unreadable("Result Code"))?;
        match result.trim() {
            "0" => {}
            "3" => return Ok(None),
            code => {
                let description = element(xml, &["Result", "Description"]).unwrap_or_default();
                return Err(Failure(format!(
                    "robokassa OpStateExt: Result Code {code} {:?}",
                    description.trim()
                )));
            }
        }
        let code = element(xml, &["State", "Code"])
            .ok_or_else(|| unreadable("State Code"))?
            .trim();
        let (event, word) = match code {
            "100" => (Event::Paid, "paid"),
            "10" => (Event::Failed, "cancelled"),
            "60" => (Event::Failed, "returned"),
            "5" => (Event::Progress, "initiated"),
            "50" => (Event::Progress, "processing"),
            "80" => (Event::Progress, "suspended"),
            _ => (Event::Progress, code),
        };
        let amount =
            match element(xml, &["Info", "OutSum"]) {
                Some(text) => Some(money::kopecks(text.trim()).ok_or_else(|| {
                    Failure("robokassa OpStateExt: OutSum is not an amount".into())
                })?),
                None => None,
            };
        Ok(Some(Notice {
            payment_id: None,
            find: Find::Number(known.number),
            event,
            amount_kopecks: amount,
            currency: None,
            external_id: Some(inv_id),
            account: None,
            provider_status: word.to_owned(),
            test: self.test,
        }))
    }
}

/// The status service, on the payment page's host.
const OP_STATE_PATH: &str = "/Merchant/WebService/Service.asmx/OpStateExt";

/// The text inside nested elements (`["State", "Code"]` → `<State>…<Code>text</Code>…</State>`):
/// enough for OpStateExt's flat, attribute-free answer without an XML parser.
fn element<'a>(xml: &'a str, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(xml, |scope, name| {
        let open = format!("<{name}>");
        let start = scope.find(&open)? + open.len();
        let rest = scope.get(start..)?;
        let end = rest.find(&format!("</{name}>"))?;
        rest.get(..end)
    })
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, Method};
    use wiremock::matchers::{method, path, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::payments::{Taxation, Vat};

    const LOGIN: &str = "demo_shop";
    const PASS1: &str = "pass1_TEST_abc";
    const PASS2: &str = "pass2_TEST_xyz";
    const PAYMENT_ID: &str = "0190f3a2-7b1c-7d4e-8f00-123456789abc";

    /// The vectors of `payments-vectors.json` → `robokassa`: (algorithm, expected hex).
    fn expect(cases: &[(Hash, &str)], compute: impl Fn(Hash) -> String) {
        for (hash, hex) in cases {
            assert_eq!(compute(*hash), *hex, "{hash:?}");
        }
    }

    #[test]
    fn link_vectors() {
        expect(
            &[
                (Hash::Md5, "23b32e2f2ce4cea9801d8e27339c42aa"),
                (
                    Hash::Sha256,
                    "768029d3299fb142bfa086bb592ff35b551fcfc874dc57d28b57693a6f03d7ec",
                ),
                (
                    Hash::Sha512,
                    "7160431e1e90d61c48441bfdeec8d2772cc30c8d2e08f5631888522b0d1c5e50939b461837d23821269a0ad967157183299fbe2fb7b9f32e7248deccd34f557f",
                ),
            ],
            |h| link_signature(h, LOGIN, "100.00", "42", None, PASS1, &[]),
        );
        // rk_link_no_invid: an empty InvId keeps its slot.
        expect(
            &[
                (Hash::Md5, "8244d0122b30f09e06cbf9d3067939d2"),
                (
                    Hash::Sha256,
                    "282151ade57f8ff469f6d1b7eda455a2590ee21313c9e958e6549d6232ebe510",
                ),
                (
                    Hash::Sha512,
                    "9055e668be6976b2b76db0e8b0c1353493d08cb14840cff37b43887f3cbc9a5bfd6b1c9ad5857ca93d36a78cfdd1e87d9212b833e82033ee1a4d3871a32f5189",
                ),
            ],
            |h| link_signature(h, LOGIN, "100.00", "", None, PASS1, &[]),
        );
        // rk_link_shp: given out of order, signed sorted after the password.
        expect(
            &[
                (Hash::Md5, "dd823e9010c407b67f6ecc49a21a0dd6"),
                (
                    Hash::Sha256,
                    "fd3db466a38ec5d84c1871cebe37ff31d50c198ca026298700f15659bc46c37b",
                ),
                (
                    Hash::Sha512,
                    "5ffbb70296a200f0fca107d83d35fc15f22aad02723558dcd8ee7b9e1eaa201ac39a636ff04f3013926a453822ba349fadf5ae70199b954c5cb8ea31b9a8749e",
                ),
            ],
            |h| {
                link_signature(
                    h,
                    LOGIN,
                    "100.00",
                    "42",
                    None,
                    PASS1,
                    &[("Shp_user_id", "7"), ("Shp_credits", "1000")],
                )
            },
        );
        // rk_docs_code_example.
        assert_eq!(
            link_signature(Hash::Md5, "test", "5.12", "5", None, "securepass1", &[]),
            "d33ad746fefb057705993fc6662c5beb"
        );
    }

    const RECEIPT_JSON: &str = r#"{"items":[{"name":"Пополнение","quantity":1,"sum":100,"payment_method":"full_payment","payment_object":"service","tax":"none"}]}"#;
    const RECEIPT_ENCODED: &str = "%7B%22items%22%3A%5B%7B%22name%22%3A%22%D0%9F%D0%BE%D0%BF%D0%BE%D0%BB%D0%BD%D0%B5%D0%BD%D0%B8%D0%B5%22%2C%22quantity%22%3A1%2C%22sum%22%3A100%2C%22payment_method%22%3A%22full_payment%22%2C%22payment_object%22%3A%22service%22%2C%22tax%22%3A%22none%22%7D%5D%7D";

    #[test]
    fn receipt_vector() {
        assert_eq!(receipt_encoded(RECEIPT_JSON), RECEIPT_ENCODED);
        expect(
            &[
                (Hash::Md5, "a7cf8cf74d0c16789113693bbd77a1c4"),
                (
                    Hash::Sha256,
                    "ca0873b7d264895e63fc164586d816729490c87e2a30f77698d8d21c813cc48a",
                ),
                (
                    Hash::Sha512,
                    "ce0f882962d41db2a6a51f8896084a808032eb46772b54e8d64744829ae95fa922bc5e3f1a5262da1e077b15761bdea88d804c9bf7d3fafa95433abc6b8d10ad",
                ),
            ],
            |h| link_signature(h, LOGIN, "100.00", "42", Some(RECEIPT_ENCODED), PASS1, &[]),
        );
    }

    #[test]
    fn result_vectors() {
        expect(
            &[
                (Hash::Md5, "16b3edac6fb0ed20a6337156372c9153"),
                (
                    Hash::Sha256,
                    "90413164faa190204e72f486c2de444da19c9f3a5c2db495095fbde24fa22ee9",
                ),
                (
                    Hash::Sha512,
                    "a94dea046245c18809a974669dd30abe1755a492c8bf821e770df485a598b6633cabf28f9ea6b0836977679aae3c9a5375747f7ed314565d8940b1eb75ce69d8",
                ),
            ],
            |h| result_signature(h, "100.00", "42", PASS2, &[]),
        );
        expect(
            &[
                (Hash::Md5, "e81f56ab641b97cf73228ca1a40c4b3c"),
                (
                    Hash::Sha256,
                    "c97c0a5f717d5bc68ae242a49d0845868f61613aa865c4af3dbf971ab3882b06",
                ),
                (
                    Hash::Sha512,
                    "342d13dd7abe0a9c03638d79fe168302a5466ecf4a7a27a79c5525b65ce01034249ea28bdb3d145ebce95758fc2c5eff5f70b263264ea66a25ca0353ae63565c",
                ),
            ],
            |h| result_signature(h, "100.000000", "42", PASS2, &[]),
        );
        let shp = [("Shp_user_id", "7"), ("Shp_credits", "1000")];
        expect(
            &[
                (Hash::Md5, "0771b7fb05a786eda2cfcc497467d981"),
                (
                    Hash::Sha256,
                    "773b6e928e0867dadebcf9471817f094bbd219f2c672518287461e1fbe69c528",
                ),
                (
                    Hash::Sha512,
                    "cf6751d02b4e6bd298da94fa315140fdd3314d4351ab4d7de02b4ca270c8c55b79c5f234a2510cf02abdac6b0de4ac833a226b93f0455eea6ac777c1a173d26f",
                ),
            ],
            |h| result_signature(h, "100.00", "42", PASS2, &shp),
        );
        // rk_success_shp: SuccessURL has ResultURL's layout with Password #1.
        expect(
            &[
                (Hash::Md5, "6f70bfdc478aea4d7175f95b83a11ca5"),
                (
                    Hash::Sha256,
                    "b73af3ff66a592893a3edd32c5ed18271172c0f4226f3908fbcb0fdfb2b949c8",
                ),
                (
                    Hash::Sha512,
                    "0761a466ecb6b9d643c0d49058cfd76cec0ab99b4fce6e37faa9cceff19f7395a17a8dbb5fe39461e004034e1fc7620f9beed42eefc48d7de1a0fe2c5618fd32",
                ),
            ],
            |h| result_signature(h, "100.00", "42", PASS1, &shp),
        );
        // rk_docs_result_example_shape.
        assert_eq!(
            result_signature(
                Hash::Md5,
                "100.000000",
                "450009",
                "Пароль#2",
                &[("Shp_oplata", "1"), ("Shp_login", "Vasya")],
            ),
            "4dc8d204b401aeab0ed93283fb0bfb74"
        );
        // rk_opstate's string, for the day OpStateExt is implemented.
        assert_eq!(
            Hash::Md5.hex("demo_shop:42:pass2_TEST_xyz"),
            "fb5b8c865de5b5a5fa563a74c8374e35"
        );
    }

    #[test]
    fn every_configured_algorithm_hashes() {
        for (name, len) in [
            ("md5", 32),
            ("sha1", 40),
            ("sha256", 64),
            ("sha384", 96),
            ("sha512", 128),
        ] {
            let hash = Hash::parse(name).unwrap();
            assert_eq!(hash.hex("x").len(), len, "{name}");
        }
        assert_eq!(
            Hash::Sha1.hex("abc"),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(Hash::parse("ripemd160"), None);
    }

    fn config(test: bool, hash: &str) -> Config {
        let mut config = Config::default();
        let c = &mut config.robokassa;
        c.merchant_login = Some(LOGIN.into());
        c.password1 = Some(Secret::new(PASS1));
        c.password2 = Some(Secret::new(PASS2));
        c.test_password1 = Some(Secret::new("test_pass1"));
        c.test_password2 = Some(Secret::new("test_pass2"));
        c.is_test = test;
        c.hash = hash.into();
        config
    }

    fn robokassa(test: bool, hash: &str) -> Robokassa {
        Robokassa::from_config(&config(test, hash), reqwest::Client::new()).unwrap()
    }

    #[test]
    fn configured_only_with_the_pair_of_its_mode() {
        let http = reqwest::Client::new();
        assert!(Robokassa::from_config(&Config::default(), http.clone()).is_none());
        let mut c = config(false, "md5");
        c.robokassa.password2 = None;
        assert!(Robokassa::from_config(&c, http.clone()).is_none());
        c.robokassa.is_test = true;
        assert!(Robokassa::from_config(&c, http.clone()).is_some());
        c.robokassa.test_password1 = None;
        assert!(Robokassa::from_config(&c, http.clone()).is_none());
        let mut c = config(false, "md5");
        c.robokassa.merchant_login = None;
        assert!(Robokassa::from_config(&c, http).is_none());
    }

    fn order(receipt: Option<&Receipt>) -> Order<'_> {
        Order {
            payment_id: PAYMENT_ID,
            number: 42,
            user_id: "user-1",
            email: "u+1@example.com",
            amount_kopecks: 15_050,
            description: "Пополнение баланса: 1505 raits & more",
            return_url: "https://app.example.com/payments/return?payment_id=x",
            webhook_url: "https://api.example.com/api/v1/payments/webhook/robokassa",
            receipt,
        }
    }

    fn query(url: &str) -> Vec<(String, String)> {
        reqwest::Url::parse(url)
            .unwrap()
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn start_builds_the_signed_link() {
        let started = robokassa(false, "sha256")
            .start(&order(None))
            .await
            .unwrap();
        assert_eq!(started.external_id, "42");
        assert_eq!(started.provider_status, "created");
        assert!(started.widget.is_none());
        assert!(
            started
                .payment_url
                .starts_with("https://auth.robokassa.ru/Merchant/Index.aspx?")
        );
        let signature = Hash::Sha256.hex(&format!(
            "demo_shop:150.50:42:pass1_TEST_abc:Shp_payment_id={PAYMENT_ID}"
        ));
        assert_eq!(
            query(&started.payment_url),
            pairs(&[
                ("MerchantLogin", LOGIN),
                ("OutSum", "150.50"),
                ("InvId", "42"),
                ("Description", "Пополнение баланса: 1505 raits & more"),
                ("SignatureValue", &signature),
                ("Culture", "ru"),
                ("Encoding", "utf-8"),
                ("Email", "u+1@example.com"),
                ("Shp_payment_id", PAYMENT_ID),
            ])
        );
        // Reserved characters are escaped, not passed through.
        assert!(started.payment_url.contains("u%2B1%40example.com"));
        assert!(started.payment_url.contains("%26+more"));
    }

    #[tokio::test]
    async fn start_in_test_mode_signs_with_the_test_password_and_says_so() {
        let started = robokassa(true, "md5").start(&order(None)).await.unwrap();
        let q = query(&started.payment_url);
        let signature = Hash::Md5.hex(&format!(
            "demo_shop:150.50:42:test_pass1:Shp_payment_id={PAYMENT_ID}"
        ));
        assert!(q.contains(&("SignatureValue".into(), signature)));
        assert!(q.contains(&("IsTest".into(), "1".into())));
    }

    #[tokio::test]
    async fn start_with_a_receipt_signs_its_encoded_form() {
        let receipt = Receipt {
            taxation: Taxation::UsnIncome,
            vat: Vat::Vat22,
            item_name: "Пополнение \"баланса\"".into(),
        };
        let started = robokassa(false, "md5")
            .start(&order(Some(&receipt)))
            .await
            .unwrap();
        let q = query(&started.payment_url);
        let json = r#"{"sno":"usn_income","items":[{"name":"Пополнение \"баланса\"","quantity":1,"sum":150.50,"payment_method":"full_payment","payment_object":"service","tax":"vat22"}]}"#;
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(value["items"][0]["name"], "Пополнение \"баланса\"");
        let encoded = receipt_encoded(json);
        assert!(!encoded.contains(' ') && !encoded.contains('"'));
        let signature = Hash::Md5.hex(&format!(
            "demo_shop:150.50:42:{encoded}:pass1_TEST_abc:Shp_payment_id={PAYMENT_ID}"
        ));
        assert_eq!(q[3], ("Description".into(), order(None).description.into()));
        assert_eq!(q[4], ("Receipt".into(), encoded.clone()));
        assert_eq!(q[5], ("SignatureValue".into(), signature));
        // In the link itself the encoded receipt is encoded once more.
        assert!(started.payment_url.contains("Receipt=%257B%2522sno%2522"));
        assert!(!q.iter().any(|(k, _)| k == "IsTest"));
    }

    #[tokio::test]
    async fn start_fails_on_a_broken_payment_url() {
        let mut c = config(false, "md5");
        c.robokassa.payment_url = "not a url".into();
        let r = Robokassa::from_config(&c, reqwest::Client::new()).unwrap();
        let err = r.start(&order(None)).await.unwrap_err();
        assert!(!err.0.contains(PASS1));
    }

    async fn notice_of(
        r: &Robokassa,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Notice, Rejection> {
        let method = if body.is_empty() {
            Method::GET
        } else {
            Method::POST
        };
        let headers = HeaderMap::new();
        r.notice(&Incoming {
            method: &method,
            query,
            headers: &headers,
            body,
            kind: None,
        })
        .await
    }

    fn paid(amount: i64, test: bool) -> Notice {
        Notice {
            payment_id: None,
            find: Find::Number(42),
            event: Event::Paid,
            amount_kopecks: Some(amount),
            currency: None,
            external_id: Some("42".into()),
            account: None,
            provider_status: "paid".into(),
            test,
        }
    }

    #[tokio::test]
    async fn result_url_by_get_and_by_post() {
        let r = robokassa(false, "md5");
        let q = "OutSum=100.00&InvId=42&SignatureValue=16b3edac6fb0ed20a6337156372c9153&Fee=3.9&EMail=a%40b.ru";
        assert_eq!(notice_of(&r, Some(q), b"").await, Ok(paid(10_000, false)));
        assert_eq!(
            notice_of(&r, None, q.as_bytes()).await,
            Ok(paid(10_000, false))
        );
        // The body wins over a query string.
        assert_eq!(
            notice_of(&r, Some("OutSum=1.00&InvId=42"), q.as_bytes()).await,
            Ok(paid(10_000, false))
        );
        // Upper-case hex is the same signature.
        let upper = "OutSum=100.00&InvId=42&SignatureValue=16B3EDAC6FB0ED20A6337156372C9153";
        assert_eq!(
            notice_of(&r, Some(upper), b"").await,
            Ok(paid(10_000, false))
        );
    }

    #[tokio::test]
    async fn result_url_signs_the_received_strings() {
        let r = robokassa(false, "sha256");
        let q = "OutSum=100.000000&InvId=42&SignatureValue=c97c0a5f717d5bc68ae242a49d0845868f61613aa865c4af3dbf971ab3882b06";
        assert_eq!(notice_of(&r, Some(q), b"").await, Ok(paid(10_000, false)));
        // Shp parameters in any order and any prefix case, sorted for the signature.
        let r = robokassa(false, "sha512");
        let q = "Shp_user_id=7&OutSum=100.00&Shp_credits=1000&InvId=42&SignatureValue=cf6751d02b4e6bd298da94fa315140fdd3314d4351ab4d7de02b4ca270c8c55b79c5f234a2510cf02abdac6b0de4ac833a226b93f0455eea6ac777c1a173d26f";
        assert_eq!(notice_of(&r, Some(q), b"").await, Ok(paid(10_000, false)));
        // A Shp parameter dropped or altered breaks it.
        let q = "OutSum=100.00&Shp_credits=1000&InvId=42&SignatureValue=cf6751d02b4e6bd298da94fa315140fdd3314d4351ab4d7de02b4ca270c8c55b79c5f234a2510cf02abdac6b0de4ac833a226b93f0455eea6ac777c1a173d26f";
        assert!(matches!(
            notice_of(&r, Some(q), b"").await,
            Err(Rejection::Forged(_))
        ));
        let sig = Hash::Md5.hex(&format!(
            "100.00:42:pass2_TEST_xyz:shp_payment_id={PAYMENT_ID}"
        ));
        let r = robokassa(false, "md5");
        let q = format!("OutSum=100.00&InvId=42&shp_payment_id={PAYMENT_ID}&SignatureValue={sig}");
        let echoed = Notice {
            payment_id: Some(PAYMENT_ID.into()),
            ..paid(10_000, false)
        };
        assert_eq!(notice_of(&r, Some(&q), b"").await, Ok(echoed));
    }

    #[tokio::test]
    async fn test_mode_takes_only_the_test_pair() {
        let live_signed =
            "OutSum=100.00&InvId=42&IsTest=1&SignatureValue=16b3edac6fb0ed20a6337156372c9153";
        let test = robokassa(true, "md5");
        assert!(matches!(
            notice_of(&test, Some(live_signed), b"").await,
            Err(Rejection::Forged(_))
        ));
        let sig = Hash::Md5.hex("100.00:42:test_pass2");
        let q = format!("OutSum=100.00&InvId=42&IsTest=1&SignatureValue={sig}");
        assert_eq!(
            notice_of(&test, Some(&q), b"").await,
            Ok(paid(10_000, true))
        );
        let live = robokassa(false, "md5");
        assert!(matches!(
            notice_of(&live, Some(&q), b"").await,
            Err(Rejection::Forged(_))
        ));
    }

    #[tokio::test]
    async fn forged_result_urls() {
        let r = robokassa(false, "md5");
        let signed_with_password1 = Hash::Md5.hex("100.00:42:pass1_TEST_abc");
        for q in [
            "OutSum=100.00&InvId=42".to_string(),
            "OutSum=100.00&InvId=42&SignatureValue=".to_string(),
            "OutSum=100.00&InvId=42&SignatureValue=16b3edac6fb0ed20a6337156372c9154".to_string(),
            "OutSum=100.00&InvId=42&SignatureValue=16b3edac".to_string(),
            // The signed amount changed.
            "OutSum=1000.00&InvId=42&SignatureValue=16b3edac6fb0ed20a6337156372c9153".to_string(),
            format!("OutSum=100.00&InvId=42&SignatureValue={signed_with_password1}"),
            // A hash of the right string with another algorithm.
            format!(
                "OutSum=100.00&InvId=42&SignatureValue={}",
                Hash::Sha256.hex("100.00:42:pass2_TEST_xyz")
            ),
        ] {
            assert!(
                matches!(
                    notice_of(&r, Some(&q), b"").await,
                    Err(Rejection::Forged(_))
                ),
                "{q}"
            );
        }
    }

    #[tokio::test]
    async fn malformed_result_urls() {
        let r = robokassa(false, "md5");
        let sig = |s: &str| Hash::Md5.hex(s);
        let cases: Vec<(Option<String>, Vec<u8>)> = vec![
            (None, vec![]),
            (None, vec![0xff, 0x00, 0xfe, b'=', 0x80]),
            (None, b"{\"OutSum\":\"100.00\"}".to_vec()),
            (Some("InvId=42&SignatureValue=x".into()), vec![]),
            (Some("OutSum=100.00&SignatureValue=x".into()), vec![]),
            (
                Some(
                    "OutSum=100.00&InvId=42&InvId=43&SignatureValue=16b3edac6fb0ed20a6337156372c9153"
                        .into(),
                ),
                vec![],
            ),
            // Correctly signed, but not a number or not an amount.
            (
                Some(format!(
                    "OutSum=100.00&InvId=abc&SignatureValue={}",
                    sig("100.00:abc:pass2_TEST_xyz")
                )),
                vec![],
            ),
            (
                Some(format!(
                    "OutSum=1e2&InvId=42&SignatureValue={}",
                    sig("1e2:42:pass2_TEST_xyz")
                )),
                vec![],
            ),
            (
                Some(format!(
                    "OutSum=-100.00&InvId=42&SignatureValue={}",
                    sig("-100.00:42:pass2_TEST_xyz")
                )),
                vec![],
            ),
            (None, vec![b'a'; MAX_NOTICE_BYTES + 1]),
        ];
        for (q, body) in cases {
            let got = notice_of(&r, q.as_deref(), &body).await;
            assert!(
                matches!(got, Err(Rejection::Malformed(_))),
                "{q:?}: {got:?}"
            );
        }
    }

    fn op_state(result: &str, state: &str, out_sum: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="utf-8"?>
<OperationStateResponse xmlns="http://merchant.roboxchange.com/WebService/">
  <Result><Code>{result}</Code><Description>описание</Description></Result>
  <State><Code>{state}</Code><RequestDate>2026-11-27T10:00:00+03:00</RequestDate></State>
  <Info><IncCurrLabel>BankCard</IncCurrLabel><IncSum>{out_sum}</IncSum>
    <PaymentMethod><Code>BankCard</Code></PaymentMethod><OutSum>{out_sum}</OutSum></Info>
</OperationStateResponse>"#
        )
    }

    async fn state_with(answer: ResponseTemplate) -> Result<Option<State>, Failure> {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/Merchant/WebService/Service.asmx/OpStateExt"))
            .and(query_param("MerchantLogin", LOGIN))
            .and(query_param("InvoiceID", "42"))
            // rk_opstate.
            .and(query_param("Signature", "fb5b8c865de5b5a5fa563a74c8374e35"))
            .respond_with(answer)
            .expect(1)
            .mount(&server)
            .await;
        let mut c = config(false, "md5");
        c.robokassa.payment_url = format!("{}/Merchant/Index.aspx", server.uri());
        let r = Robokassa::from_config(&c, reqwest::Client::new()).unwrap();
        let known = Known {
            payment_id: PAYMENT_ID,
            number: 42,
            external_id: Some("42"),
        };
        r.state(known).await
    }

    fn xml(body: String) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_raw(body, "text/xml; charset=utf-8")
    }

    #[tokio::test]
    async fn state_asks_op_state_ext() {
        let got = state_with(xml(op_state("0", "100", "150.000000"))).await;
        assert_eq!(got.unwrap(), Some(paid(15_000, false)));
        let got = state_with(xml(op_state("0", "10", "150.000000")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (got.event, got.provider_status.as_str()),
            (Event::Failed, "cancelled")
        );
        let got = state_with(xml(op_state("0", "60", "150.00")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.event, Event::Failed);
        for code in ["5", "50", "80", "7"] {
            let got = state_with(xml(op_state("0", code, "150.00")))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.event, Event::Progress, "{code}");
            assert_eq!(got.amount_kopecks, Some(15_000));
        }
        // Robokassa has no operation for the number yet.
        assert!(
            state_with(xml(op_state("3", "", "")))
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn state_failures() {
        for answer in [
            xml(op_state("1", "", "")),
            xml(op_state("1000", "", "")),
            xml(op_state("0", "100", "lots")),
            xml(
                "<OperationStateResponse><Result><Code>0</Code></Result></OperationStateResponse>"
                    .into(),
            ),
            xml("garbage".into()),
            ResponseTemplate::new(200).set_body_bytes(vec![0xff, 0xfe]),
            ResponseTemplate::new(500),
            ResponseTemplate::new(404).set_body_string("<html/>"),
        ] {
            let err = state_with(answer).await.unwrap_err().0;
            assert!(err.starts_with("robokassa OpStateExt"), "{err}");
            assert!(!err.contains(PASS2) && !err.contains("fb5b8c865de5b5a5fa563a74c8374e35"));
        }
    }

    #[test]
    fn elements_are_read_without_panicking() {
        let xml = "<A><B>1</B><C><B>2</B></C></A>";
        assert_eq!(element(xml, &["A", "B"]), Some("1"));
        assert_eq!(element(xml, &["C", "B"]), Some("2"));
        assert_eq!(element(xml, &["D"]), None);
        assert_eq!(element("<A>", &["A"]), None);
        assert_eq!(element("</A><A>", &["A"]), None);
        assert_eq!(element("<А>ж</А>", &["А"]), Some("ж"));
    }
}
