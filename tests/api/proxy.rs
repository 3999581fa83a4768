//! `OPENAI_PROXY_URL` against two small proxies on loopback written here: an HTTP proxy
//! (`CONNECT` tunnels and absolute-form requests) and a SOCKS5 one (RFC 1928, no
//! authentication). Each counts what it served and records what it was asked for, so the tests
//! can tell that traffic really went through it and in which form.
//!
//! The OpenAI client trusts only the system roots, and the one way to add a root without
//! touching production code is process-wide (`SSL_CERT_FILE`), which parallel tests cannot
//! share. So the HTTPS legs prove the tunnel differently: the proxy sees `CONNECT host:port`
//! (or the SOCKS request), and the call fails on the fake's untrusted certificate, which could
//! only have reached the client through that tunnel.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use easy_writer::config::{self, Secret};
use easy_writer::llm::openai::Client;
use easy_writer::llm::{ChatRequest, Error, Provider};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt, copy_bidirectional};
use tokio::net::{TcpListener, TcpStream};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A test makes a handful of connections; the proxies stop accepting after this many.
const MAX_CONNECTIONS: usize = 16;
/// The longest a client may take to say where it wants to go.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request head the HTTP proxy reads.
const MAX_HEAD: usize = 16 * 1024;

// ---------------------------------------------------------------------------------------------
// The proxies

/// A proxy on `127.0.0.1:<port>`, its count of connections it forwarded, and what it was asked
/// for (`T`). It runs on the test's runtime, so it stops with the test.
struct LoopbackProxy<T> {
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<T>>>,
}

impl<T: Clone + Send + 'static> LoopbackProxy<T> {
    /// Accepts up to [`MAX_CONNECTIONS`]; for each, `handshake` (bounded by
    /// [`HANDSHAKE_TIMEOUT`]) reads what the client wants, connects upstream and returns both
    /// ends, which are then piped both ways.
    async fn start<F, Fut>(handshake: F) -> LoopbackProxy<T>
    where
        F: Fn(TcpStream, Arc<Mutex<Vec<T>>>) -> Fut + Copy + Send + 'static,
        Fut: Future<Output = io::Result<(TcpStream, TcpStream)>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (served_by_loop, seen_by_loop) = (served.clone(), seen.clone());
        tokio::spawn(async move {
            for _ in 0..MAX_CONNECTIONS {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let (served, seen) = (served_by_loop.clone(), seen_by_loop.clone());
                tokio::spawn(async move {
                    let Ok(Ok((mut client, mut upstream))) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(client, seen)).await
                    else {
                        return;
                    };
                    // Counted before a byte of the answer can reach the client.
                    served.fetch_add(1, Ordering::SeqCst);
                    let _ = copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        });
        LoopbackProxy { addr, served, seen }
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<T> {
        self.seen.lock().unwrap().clone()
    }
}

/// How a client addressed the HTTP proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Form {
    /// `CONNECT host:port`: a tunnel (what clients use for `https://` targets).
    Connect,
    /// `POST http://host:port/path`: the proxy forwards the request (`http://` targets).
    Absolute,
}

/// One request to the HTTP proxy.
#[derive(Debug, Clone)]
struct Seen {
    form: Form,
    request_line: String,
    proxy_authorization: Option<String>,
}

async fn http_proxy() -> LoopbackProxy<Seen> {
    LoopbackProxy::start(http_handshake).await
}

async fn http_handshake(
    mut client: TcpStream,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> io::Result<(TcpStream, TcpStream)> {
    let (head, rest) = read_head(&mut client).await?;
    let mut lines = head.split("\r\n").filter(|line| !line.is_empty());
    let request_line = lines.next().unwrap_or_default().to_owned();
    let headers: Vec<&str> = lines.collect();
    let proxy_authorization = headers.iter().find_map(|h| {
        let (name, value) = h.split_once(':')?;
        name.eq_ignore_ascii_case("proxy-authorization")
            .then(|| value.trim().to_owned())
    });
    let mut parts = request_line.split(' ');
    let (method, target, version) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );

    if method == "CONNECT" {
        seen.lock().unwrap().push(Seen {
            form: Form::Connect,
            request_line: request_line.clone(),
            proxy_authorization,
        });
        let mut upstream = match TcpStream::connect(target).await {
            Ok(upstream) => upstream,
            Err(e) => return Err(refuse(&mut client, "502 Bad Gateway", e).await),
        };
        client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await?;
        upstream.write_all(&rest).await?;
        return Ok((client, upstream));
    }

    let Some((authority, origin)) = split_absolute(target) else {
        let e = io::Error::new(io::ErrorKind::InvalidData, "not absolute-form");
        return Err(refuse(&mut client, "400 Bad Request", e).await);
    };
    seen.lock().unwrap().push(Seen {
        form: Form::Absolute,
        request_line: request_line.clone(),
        proxy_authorization,
    });
    let mut upstream = match TcpStream::connect(authority.as_str()).await {
        Ok(upstream) => upstream,
        Err(e) => return Err(refuse(&mut client, "502 Bad Gateway", e).await),
    };
    // The request line in origin-form; the proxy's own headers stay here.
    let mut forwarded = format!("{method} {origin} {version}\r\n");
    for h in headers {
        let name = h.split(':').next().unwrap_or_default();
        if !name.eq_ignore_ascii_case("proxy-authorization")
            && !name.eq_ignore_ascii_case("proxy-connection")
        {
            forwarded.push_str(h);
            forwarded.push_str("\r\n");
        }
    }
    forwarded.push_str("\r\n");
    upstream.write_all(forwarded.as_bytes()).await?;
    upstream.write_all(&rest).await?;
    // Later requests on this connection go to the same origin unchanged; each test sends one.
    Ok((client, upstream))
}

/// `http://host:port/path?query` → (`host:port`, `/path?query`); port 80 when absent.
fn split_absolute(target: &str) -> Option<(String, String)> {
    let rest = target.strip_prefix("http://")?;
    let (authority, origin) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return None;
    }
    let has_port = !authority.ends_with(']')
        && authority
            .rsplit_once(':')
            .is_some_and(|(_, port)| port.parse::<u16>().is_ok());
    let authority = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let origin = if origin.starts_with('?') {
        format!("/{origin}")
    } else {
        origin.to_owned()
    };
    Some((authority, origin))
}

/// Reads a request head up to its blank line; returns it and whatever was read past it.
async fn read_head(stream: &mut TcpStream) -> io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            let head = String::from_utf8(buf)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "head is not UTF-8"))?;
            return Ok((head, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Answers `status` with no body and hands back `error` for the caller to return.
async fn refuse(client: &mut TcpStream, status: &str, error: io::Error) -> io::Error {
    let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let _ = client.write_all(answer.as_bytes()).await;
    error
}

/// A SOCKS5 proxy; it records each CONNECT target as `ipv4 …`, `ipv6 …` or `domain …`.
async fn socks5_proxy() -> LoopbackProxy<String> {
    LoopbackProxy::start(socks5_handshake).await
}

async fn socks5_handshake(
    mut client: TcpStream,
    seen: Arc<Mutex<Vec<String>>>,
) -> io::Result<(TcpStream, TcpStream)> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());

    // Greeting: VER NMETHODS METHODS…; only "no authentication" (0x00) is offered back.
    let mut greeting = [0u8; 2];
    client.read_exact(&mut greeting).await?;
    if greeting[0] != 5 {
        return Err(invalid("not SOCKS5"));
    }
    let mut methods = vec![0u8; usize::from(greeting[1])];
    client.read_exact(&mut methods).await?;
    if !methods.contains(&0x00) {
        client.write_all(&[5, 0xff]).await?;
        return Err(invalid("no acceptable authentication method"));
    }
    client.write_all(&[5, 0x00]).await?;

    // Request: VER CMD RSV ATYP DST.ADDR DST.PORT.
    let mut request = [0u8; 4];
    client.read_exact(&mut request).await?;
    if request[0] != 5 {
        return Err(invalid("not SOCKS5"));
    }
    if request[1] != 0x01 {
        socks5_reply(&mut client, 0x07, None).await?;
        return Err(invalid("only CONNECT is supported"));
    }
    let upstream = match request[3] {
        0x01 => {
            let mut ip = [0u8; 4];
            client.read_exact(&mut ip).await?;
            let target = SocketAddr::from((Ipv4Addr::from(ip), client.read_u16().await?));
            seen.lock().unwrap().push(format!("ipv4 {target}"));
            TcpStream::connect(target).await
        }
        0x03 => {
            let mut name = vec![0u8; usize::from(client.read_u8().await?)];
            client.read_exact(&mut name).await?;
            let name = String::from_utf8(name).map_err(|_| invalid("domain is not UTF-8"))?;
            let port = client.read_u16().await?;
            seen.lock().unwrap().push(format!("domain {name}:{port}"));
            // Tries every address the name resolves to.
            TcpStream::connect((name.as_str(), port)).await
        }
        0x04 => {
            let mut ip = [0u8; 16];
            client.read_exact(&mut ip).await?;
            let target = SocketAddr::from((Ipv6Addr::from(ip), client.read_u16().await?));
            seen.lock().unwrap().push(format!("ipv6 {target}"));
            TcpStream::connect(target).await
        }
        _ => {
            socks5_reply(&mut client, 0x08, None).await?;
            return Err(invalid("unknown address type"));
        }
    };
    match upstream {
        Ok(upstream) => {
            socks5_reply(&mut client, 0x00, Some(upstream.local_addr()?)).await?;
            Ok((client, upstream))
        }
        Err(e) => {
            let code = if e.kind() == io::ErrorKind::ConnectionRefused {
                0x05
            } else {
                0x01
            };
            socks5_reply(&mut client, code, None).await?;
            Err(e)
        }
    }
}

/// VER REP RSV ATYP BND.ADDR BND.PORT.
async fn socks5_reply(
    client: &mut TcpStream,
    code: u8,
    bound: Option<SocketAddr>,
) -> io::Result<()> {
    let bound = bound.unwrap_or_else(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let mut reply = vec![5, code, 0];
    match bound {
        SocketAddr::V4(a) => {
            reply.push(0x01);
            reply.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            reply.push(0x04);
            reply.extend_from_slice(&a.ip().octets());
        }
    }
    reply.extend_from_slice(&bound.port().to_be_bytes());
    client.write_all(&reply).await
}

// ---------------------------------------------------------------------------------------------
// The fakes and the client

fn client(base_url: String, proxy_url: &str) -> Client {
    let cfg = config::OpenAi {
        api_key: Some(Secret::new("sk-test")),
        base_url,
        proxy_url: Some(Secret::new(proxy_url)),
        ..Default::default()
    };
    Client::new(&cfg, Duration::from_secs(5)).unwrap()
}

fn request() -> ChatRequest {
    ChatRequest {
        system: "Ты редактор.".into(),
        user: "Исправь ошибки: превет".into(),
        ..Default::default()
    }
}

fn completion(content: &str) -> serde_json::Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    })
}

/// A fake OpenAI on plain HTTP that expects exactly `calls` chat requests.
async fn fake_openai(server: MockServer, calls: u64) -> MockServer {
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", "Bearer sk-test"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("Привет")))
        .expect(calls)
        .mount(&server)
        .await;
    server
}

/// A fake OpenAI over real TLS on `127.0.0.1`, with a self-signed certificate no system trusts.
async fn tls_fake() -> u16 {
    use axum::Json;
    use axum::routing::post;

    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![certified.cert.der().clone()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der())
                .into(),
        )
        .unwrap();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(|| async { Json(completion("по TLS")) }),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls)),
    )
    .unwrap();
    tokio::spawn(server.serve(app.into_make_service()));
    port
}

/// The call failed after the tunnel was up: the fake's certificate was refused.
fn assert_certificate_refused(result: Result<impl std::fmt::Debug, Error>) {
    let error = result.unwrap_err();
    let Error::Connect(message) = &error else {
        panic!("expected a connection error, got {error:?}")
    };
    assert!(message.to_lowercase().contains("certificate"), "{message}");
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------------
// The tests

#[tokio::test]
async fn an_http_proxy_forwards_plain_http_in_absolute_form_with_its_credentials() {
    let fake = fake_openai(MockServer::start().await, 1).await;
    let proxy = http_proxy().await;

    let answer = client(
        format!("{}/v1", fake.uri()),
        &format!("http://ew-user:ew-pass@{}", proxy.addr),
    )
    .chat(&request())
    .await
    .unwrap();

    assert_eq!(answer.text, "Привет");
    assert_eq!(answer.usage.total_tokens, 15);
    assert_eq!(proxy.served(), 1);
    let seen = proxy.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].form, Form::Absolute);
    assert_eq!(
        seen[0].request_line,
        format!(
            "POST http://{}/v1/chat/completions HTTP/1.1",
            fake.address()
        )
    );
    // base64("ew-user:ew-pass")
    assert_eq!(
        seen[0].proxy_authorization.as_deref(),
        Some("Basic ZXctdXNlcjpldy1wYXNz")
    );
    // `expect(1)` on the fake is checked when it drops; say so explicitly too.
    assert_eq!(fake.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_http_proxy_tunnels_https_with_connect() {
    let port = tls_fake().await;
    let proxy = http_proxy().await;

    let result = client(
        format!("https://127.0.0.1:{port}/v1"),
        &format!("http://ew-user:ew-pass@{}", proxy.addr),
    )
    .chat(&request())
    .await;

    assert_certificate_refused(result);
    assert_eq!(proxy.served(), 1);
    let seen = proxy.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].form, Form::Connect);
    assert_eq!(
        seen[0].request_line,
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1")
    );
    assert_eq!(
        seen[0].proxy_authorization.as_deref(),
        Some("Basic ZXctdXNlcjpldy1wYXNz")
    );
}

#[tokio::test]
async fn a_socks5_proxy_carries_the_chat_to_an_ipv4_address() {
    let fake = fake_openai(MockServer::start().await, 1).await;
    let proxy = socks5_proxy().await;

    let answer = client(
        format!("{}/v1", fake.uri()),
        &format!("socks5://{}", proxy.addr),
    )
    .chat(&request())
    .await
    .unwrap();

    assert_eq!(answer.text, "Привет");
    assert_eq!(proxy.served(), 1);
    assert_eq!(proxy.seen(), [format!("ipv4 {}", fake.address())]);
    assert_eq!(fake.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn socks5h_leaves_the_host_name_to_the_proxy() {
    let fake = fake_openai(MockServer::start().await, 1).await;
    let proxy = socks5_proxy().await;
    let port = fake.address().port();

    let answer = client(
        format!("http://localhost:{port}/v1"),
        &format!("socks5h://{}", proxy.addr),
    )
    .chat(&request())
    .await
    .unwrap();

    assert_eq!(answer.text, "Привет");
    assert_eq!(proxy.served(), 1);
    assert_eq!(proxy.seen(), [format!("domain localhost:{port}")]);
}

/// The IPv6 address type. Through `socks5h`: with `socks5` (local resolution) reqwest 0.12
/// hands the bracketed literal `[::1]` to the system resolver, which fails before the proxy is
/// asked; `socks5h` sends the literal as an IPv6 address, which is what this proves.
#[tokio::test]
async fn a_socks5_proxy_carries_the_chat_to_an_ipv6_address() {
    let Ok(listener) = std::net::TcpListener::bind("[::1]:0") else {
        eprintln!("no IPv6 loopback here; skipped");
        return;
    };
    let fake = fake_openai(MockServer::builder().listener(listener).start().await, 1).await;
    let proxy = socks5_proxy().await;

    let answer = client(
        format!("{}/v1", fake.uri()),
        &format!("socks5h://{}", proxy.addr),
    )
    .chat(&request())
    .await
    .unwrap();

    assert_eq!(answer.text, "Привет");
    assert_eq!(proxy.served(), 1);
    assert_eq!(proxy.seen(), [format!("ipv6 {}", fake.address())]);
}

#[tokio::test]
async fn a_socks5_proxy_carries_tls_end_to_end() {
    let port = tls_fake().await;
    let proxy = socks5_proxy().await;

    let result = client(
        format!("https://127.0.0.1:{port}/v1"),
        &format!("socks5://{}", proxy.addr),
    )
    .chat(&request())
    .await;

    assert_certificate_refused(result);
    assert_eq!(proxy.served(), 1);
    assert_eq!(proxy.seen(), [format!("ipv4 127.0.0.1:{port}")]);
}

#[tokio::test]
async fn a_proxy_that_is_down_is_a_retryable_connection_error_that_hides_its_credentials() {
    let fake = fake_openai(MockServer::start().await, 0).await;
    let port = closed_port();

    for scheme in ["http", "socks5", "socks5h"] {
        let error = client(
            format!("{}/v1", fake.uri()),
            &format!("{scheme}://ew-user:hunter2-secret@127.0.0.1:{port}"),
        )
        .chat(&request())
        .await
        .unwrap_err();
        let Error::Connect(message) = &error else {
            panic!("{scheme}: expected a connection error, got {error:?}")
        };
        assert!(error.is_retryable(), "{scheme}");
        assert!(message.contains("Connect"), "{scheme}: {message}");
        for secret in ["hunter2-secret", "ew-user"] {
            assert!(!message.contains(secret), "{scheme}: {message}");
            assert!(
                !format!("{error:?}").contains(secret),
                "{scheme}: {error:?}"
            );
        }
    }
}

#[tokio::test]
async fn an_invalid_proxy_url_is_not_configured() {
    for url in ["::not a url", "http://[::1", "socks5://proxy:99999"] {
        let cfg = config::OpenAi {
            api_key: Some(Secret::new("sk-test")),
            proxy_url: Some(Secret::new(url)),
            ..Default::default()
        };
        let error = Client::new(&cfg, Duration::from_secs(1)).err().unwrap();
        let Error::NotConfigured(message) = &error else {
            panic!("{url}: {error:?}")
        };
        assert!(message.contains("OPENAI_PROXY_URL"), "{url}: {message}");
        assert!(!message.contains(url), "{url}: {message}");
    }
}
