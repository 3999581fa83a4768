//! A fake FusionBrain (the Kandinsky pipelines API) on loopback that draws a JPEG of exactly
//! the size each run asks for, and can censor, fail or never finish, for the `/images` tests.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde_json::json;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// How the fake answers status polls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// `DONE` with the picture at the first poll.
    Draw,
    /// `DONE` but `censored: true`.
    Censor,
    /// `FAIL`.
    Fail,
    /// `PROCESSING` forever.
    Never,
}

#[derive(Clone)]
pub struct FakeKandinsky {
    behaviour: Arc<Mutex<Behaviour>>,
    /// Runs by uuid: the size asked for.
    runs: Arc<Mutex<HashMap<String, (u32, u32)>>>,
}

/// A JPEG of `width`×`height`.
pub fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let picture = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(picture)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("encode jpeg");
    out.into_inner()
}

/// The size in a PNG's bytes.
pub fn png_size(bytes: &[u8]) -> (u32, u32) {
    let picture =
        image::load_from_memory_with_format(bytes, image::ImageFormat::Png).expect("a PNG");
    (picture.width(), picture.height())
}

/// The number after `"key":` in `text`.
fn number_after(text: &str, key: &str) -> Option<u32> {
    let rest = &text[text.find(&format!("\"{key}\""))? + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

impl FakeKandinsky {
    /// Mounts the pipelines API on `server`.
    pub async fn mount(server: &MockServer) -> FakeKandinsky {
        let fake = FakeKandinsky {
            behaviour: Arc::new(Mutex::new(Behaviour::Draw)),
            runs: Arc::default(),
        };
        Mock::given(method("GET"))
            .and(path("/key/api/v1/pipelines"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!([
                {"id": "pipeline-1", "name": "Kandinsky", "version": 3.1, "status": "ACTIVE", "type": "TEXT2IMAGE"}
            ])))
            .mount(server)
            .await;
        let runs = fake.runs.clone();
        Mock::given(method("POST"))
            .and(path("/key/api/v1/pipeline/run"))
            .respond_with(move |request: &Request| {
                let body = String::from_utf8_lossy(&request.body);
                let size = (
                    number_after(&body, "width").unwrap_or(1024),
                    number_after(&body, "height").unwrap_or(1024),
                );
                let uuid = uuid::Uuid::new_v4().to_string();
                runs.lock().unwrap().insert(uuid.clone(), size);
                ResponseTemplate::new(201)
                    .set_body_json(json!({"uuid": uuid, "status": "INITIAL", "status_time": 0}))
            })
            .mount(server)
            .await;
        let (runs, behaviour) = (fake.runs.clone(), fake.behaviour.clone());
        Mock::given(method("GET"))
            .and(path_regex("^/key/api/v1/pipeline/status/.+$"))
            .respond_with(move |request: &Request| {
                let uuid = request.url.path().rsplit('/').next().unwrap_or_default();
                let Some((width, height)) = runs.lock().unwrap().get(uuid).copied() else {
                    return ResponseTemplate::new(404);
                };
                let body = match *behaviour.lock().unwrap() {
                    Behaviour::Draw => {
                        let file = base64::engine::general_purpose::STANDARD.encode(jpeg(width, height));
                        json!({"uuid": uuid, "status": "DONE", "result": {"files": [file], "censored": false}})
                    }
                    Behaviour::Censor => json!({"uuid": uuid, "status": "DONE", "result": {"files": [], "censored": true}}),
                    Behaviour::Fail => json!({"uuid": uuid, "status": "FAIL", "errorDescription": "scripted failure"}),
                    Behaviour::Never => json!({"uuid": uuid, "status": "PROCESSING"}),
                };
                ResponseTemplate::new(200).set_body_json(body)
            })
            .mount(server)
            .await;
        fake
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    /// The sizes the runs asked for, in no particular order.
    pub fn runs(&self) -> usize {
        self.runs.lock().unwrap().len()
    }
}
