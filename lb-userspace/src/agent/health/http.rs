//! The `http` and `https` probes: one request on a new connection, through hyper's HTTP/1 client
//! (TLS by rustls for `https`). The status must be the expected one; when a check expects a
//! substring, the body is read in whatever framing the server chose (a length, chunks, or up to
//! the close) until the substring shows up, the body ends, or [`HTTP_BODY_LIMIT`] bytes were
//! read. Without an expected substring the body is not read at all.

use std::{
    net::{IpAddr, SocketAddr},
    pin::pin,
    sync::{Arc, OnceLock},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::header;
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use super::{ProbeError, io};
use crate::config::{HTTP_BODY_LIMIT, HttpMethod, Tls};

/// What an HTTP check asks and expects (the fields of `CheckKind::Http`).
pub struct HttpCheck<'a> {
    pub method: HttpMethod,
    pub path: &'a str,
    pub host: Option<&'a str>,
    pub expect_status: u16,
    pub expect_body: Option<&'a str>,
    pub tls: Option<&'a Tls>,
}

/// A TLS client made once per check: its trust store and verifier.
pub struct TlsClient {
    connector: TlsConnector,
}

impl TlsClient {
    pub fn new(tls: &Tls) -> Result<Self, ProbeError> {
        // ring rather than aws-lc-rs: no cmake or long C build on a fresh machine. What ring
        // lacks (post-quantum key exchange) matters for secrets meant to outlive decades, not
        // for a health check's status line.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| ProbeError::Tls(e.to_string()))?;
        let mut config = if !tls.verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        } else if let Some(ca) = &tls.ca {
            let mut roots = RootCertStore::empty();
            for der in &ca.certificates {
                // Validated when the configuration was read.
                roots.add(CertificateDer::from(der.clone())).map_err(|e| ProbeError::Tls(e.to_string()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder.with_root_certificates(system_roots()?).with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self { connector: TlsConnector::from(Arc::new(config)) })
    }
}

/// The system's CA store (Debian: /etc/ssl/certs), read once per process.
fn system_roots() -> Result<Arc<RootCertStore>, ProbeError> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    let roots = ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(found.certs);
        Arc::new(roots)
    });
    if roots.is_empty() {
        return Err(ProbeError::Tls(
            "the system's CA store is empty (install ca-certificates) and the check names no tls_ca_file".into(),
        ));
    }
    Ok(Arc::clone(roots))
}

/// Checks the handshake's signatures but accepts any certificate (`tls_verify = false`).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One request to `backend` (whose `Host` is the check's `host`, else `default_host`); the
/// caller bounds it by the check's timeout. `tls` is made on the first `https` probe and kept.
pub async fn probe(
    backend: SocketAddr,
    default_host: IpAddr,
    check: &HttpCheck<'_>,
    tls: &mut Option<TlsClient>,
) -> Result<(), ProbeError> {
    let host = check.host.map_or_else(|| host_header(default_host), str::to_string);
    let stream = TcpStream::connect(backend).await.map_err(io("connect"))?;
    stream.set_nodelay(true).map_err(io("set TCP_NODELAY"))?;
    let Some(settings) = check.tls else { return exchange(stream, &host, check).await };
    let client = match tls {
        Some(client) => client,
        None => tls.insert(TlsClient::new(settings)?),
    };
    let server_name = server_name(settings, check.host, backend.ip());
    let stream = client.connector.connect(server_name, stream).await.map_err(|e| {
        ProbeError::Tls(format!("handshake: {}", e.get_ref().map_or_else(|| e.to_string(), ToString::to_string)))
    })?;
    exchange(stream, &host, check).await
}

/// The name the certificate must be valid for, sent as SNI: the configured one, else the
/// `host` (without a port), else the backend's address.
fn server_name(tls: &Tls, host: Option<&str>, backend: IpAddr) -> ServerName<'static> {
    let configured = tls.server_name.as_deref().or(host.map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name)));
    configured
        .and_then(|name| ServerName::try_from(name.to_string()).ok())
        .unwrap_or(ServerName::IpAddress(backend.into()))
}

/// An address as a Host header: IPv6 in brackets.
fn host_header(address: IpAddr) -> String {
    match address {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// The request and its answer over an established connection.
async fn exchange<S>(stream: S, host: &str, check: &HttpCheck<'_>) -> Result<(), ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(http("handshake"))?;
    let method = match check.method {
        HttpMethod::Get => hyper::Method::GET,
        HttpMethod::Head => hyper::Method::HEAD,
    };
    let request = hyper::Request::builder()
        .method(method)
        .uri(check.path)
        .header(header::HOST, host)
        .header(header::USER_AGENT, "lb-health")
        .header(header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| ProbeError::Http { step: "request", error: e.to_string() })?;
    let answer = async {
        let response = sender.send_request(request).await.map_err(http("response"))?;
        let status = response.status().as_u16();
        if status != check.expect_status {
            return Err(ProbeError::Status { got: status, expected: check.expect_status });
        }
        match check.expect_body {
            Some(needle) => find_in_body(response.into_body(), needle.as_bytes()).await,
            None => Ok(()),
        }
    };
    // The connection runs beside the answer: it moves the bytes the answer reads.
    let (mut answer, mut connection) = (pin!(answer), pin!(connection));
    tokio::select! {
        biased;
        result = &mut answer => result,
        ended = &mut connection => {
            ended.map_err(http("connection"))?;
            // Closed cleanly: what the answer needs may already be buffered.
            answer.await
        }
    }
}

/// Reads `body` until it shows `needle`, ends, or reached [`HTTP_BODY_LIMIT`] bytes.
async fn find_in_body(mut body: hyper::body::Incoming, needle: &[u8]) -> Result<(), ProbeError> {
    if needle.is_empty() {
        return Ok(());
    }
    let mut read: Vec<u8> = Vec::new();
    while read.len() < HTTP_BODY_LIMIT {
        let Some(frame) = body.frame().await else { break };
        let frame = frame.map_err(http("body"))?;
        if let Ok(data) = frame.into_data() {
            let searched = read.len().saturating_sub(needle.len().saturating_sub(1));
            let take = data.len().min(HTTP_BODY_LIMIT - read.len());
            read.extend_from_slice(&data[..take]);
            if contains_from(&read, needle, searched) {
                return Ok(());
            }
        }
    }
    Err(ProbeError::Body { needle: String::from_utf8_lossy(needle).into_owned(), read: read.len() })
}

/// Whether `haystack[from..]` contains `needle` (not empty).
fn contains_from(haystack: &[u8], needle: &[u8], from: usize) -> bool {
    haystack.get(from..).is_some_and(|h| h.windows(needle.len()).any(|w| w == needle))
}

/// The [`ProbeError::Http`] of `step`, with the error's causes (hyper's own text is general:
/// "error reading a body from connection").
fn http(step: &'static str) -> impl FnOnce(hyper::Error) -> ProbeError {
    move |error| {
        let mut text = error.to_string();
        let mut cause = std::error::Error::source(&error);
        while let Some(c) = cause {
            text += &format!(": {c}");
            cause = c.source();
        }
        ProbeError::Http { step, error: text }
    }
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, time::Duration};

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    use rustls_pki_types::PrivateKeyDer;
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };
    use tokio_rustls::TlsAcceptor;

    use super::*;
    use crate::config::TrustedCas;

    /// What the test server sends after the request's head.
    enum Answer {
        /// These pieces, 5 ms apart, then the close.
        Pieces(Vec<&'static [u8]>),
        /// A chunked body of `x` without end (until the client goes).
        Endless,
    }

    /// Serves one connection (over TLS with `tls`); the request's head as it arrived.
    async fn serve_once(listener: TcpListener, tls: Option<TlsAcceptor>, answer: Answer) -> String {
        let (stream, _) = listener.accept().await.expect("accept");
        match tls {
            Some(acceptor) => match acceptor.accept(stream).await {
                Ok(stream) => respond(stream, answer).await,
                Err(e) => format!("handshake failed: {e}"),
            },
            None => respond(stream, answer).await,
        }
    }

    async fn respond<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, answer: Answer) -> String {
        // The head, or what came in 200 ms (a TLS hello to a plain server has no end of head).
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
        })
        .await;
        match answer {
            Answer::Pieces(pieces) => {
                for piece in pieces {
                    if stream.write_all(piece).await.is_err() {
                        break;
                    }
                    let _ = stream.flush().await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            Answer::Endless => {
                let mut chunk = b"1000\r\n".to_vec();
                chunk.extend_from_slice(&[b'x'; 0x1000]);
                chunk.extend_from_slice(b"\r\n");
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").await;
                while stream.write_all(&chunk).await.is_ok() {}
            }
        }
        let _ = stream.shutdown().await;
        String::from_utf8_lossy(&head).into_owned()
    }

    fn get(expect_body: Option<&str>) -> HttpCheck<'_> {
        HttpCheck { method: HttpMethod::Get, path: "/healthz", host: None, expect_status: 200, expect_body, tls: None }
    }

    /// Runs `check` against a server giving `answer`: the probe's result and the request's head.
    async fn exchange_with(
        check: &HttpCheck<'_>,
        server_tls: Option<TlsAcceptor>,
        answer: Answer,
    ) -> (Result<(), ProbeError>, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_once(listener, server_tls, answer));
        let mut tls = None;
        let result = tokio::time::timeout(Duration::from_secs(10), probe(address, address.ip(), check, &mut tls))
            .await
            .expect("the probe ended on its own");
        (result, server.await.unwrap())
    }

    #[tokio::test]
    async fn chunked_body_with_the_substring_across_chunks() {
        let answer = Answer::Pieces(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"3\r\nsta\r\n",
            b"8\r\ntus: ok\n\r\n",
            b"0\r\n\r\n",
        ]);
        let (result, head) = exchange_with(&get(Some("status: ok")), None, answer).await;
        result.unwrap();
        assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
        assert!(head.to_ascii_lowercase().contains("host: 127.0.0.1\r\n"), "{head}");
    }

    #[tokio::test]
    async fn body_read_to_the_close_and_missing_substring() {
        let answer = Answer::Pieces(vec![b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"degraded"]);
        let (result, _) = exchange_with(&get(Some("ok")), None, answer).await;
        assert!(matches!(result, Err(ProbeError::Body { read: 8, .. })), "{result:?}");
    }

    #[tokio::test]
    async fn endless_body_is_read_up_to_the_limit() {
        let (result, _) = exchange_with(&get(Some("never")), None, Answer::Endless).await;
        assert!(matches!(result, Err(ProbeError::Body { read: HTTP_BODY_LIMIT, .. })), "{result:?}");
    }

    #[tokio::test]
    async fn status_and_head_without_body() {
        let answer = Answer::Pieces(vec![b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown"]);
        let (result, _) = exchange_with(&get(None), None, answer).await;
        assert!(matches!(result, Err(ProbeError::Status { got: 503, expected: 200 })), "{result:?}");
        // A HEAD answer announces a length it does not send.
        let head = HttpCheck { method: HttpMethod::Head, host: Some("svc.example"), ..get(None) };
        let answer = Answer::Pieces(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"]);
        let (result, request) = exchange_with(&head, None, answer).await;
        result.unwrap();
        assert!(request.starts_with("HEAD /healthz HTTP/1.1\r\n"), "{request}");
        assert!(request.to_ascii_lowercase().contains("host: svc.example\r\n"), "{request}");
    }

    #[tokio::test]
    async fn not_http_fails() {
        let (result, _) = exchange_with(&get(None), None, Answer::Pieces(vec![b"SSH-2.0-OpenSSH_9.2\r\n"])).await;
        assert!(matches!(result, Err(ProbeError::Http { .. })), "{result:?}");
    }

    #[test]
    fn ipv6_host_header_is_bracketed() {
        assert_eq!(host_header("fd00::1".parse().unwrap()), "[fd00::1]");
        assert_eq!(host_header("198.18.0.1".parse().unwrap()), "198.18.0.1");
    }

    /// A CA, and a server certificate it signed for `backend.test`.
    struct Pki {
        ca: Vec<u8>,
        acceptor: TlsAcceptor,
        /// A certificate for the same name, signed by nobody else.
        self_signed_acceptor: TlsAcceptor,
    }

    fn acceptor(certificate: CertificateDer<'static>, key: &KeyPair) -> TlsAcceptor {
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certificate], PrivateKeyDer::try_from(key.serialize_der()).unwrap())
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }

    fn pki() -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "lb test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["backend.test".to_string()]).unwrap();
        let signed = params.signed_by(&key, &ca).unwrap();
        let self_signed = params.self_signed(&key).unwrap();
        Pki {
            ca: ca.der().to_vec(),
            acceptor: acceptor(signed.der().clone(), &key),
            self_signed_acceptor: acceptor(self_signed.der().clone(), &key),
        }
    }

    fn https(tls: &Tls) -> HttpCheck<'_> {
        HttpCheck { tls: Some(tls), ..get(Some("ok")) }
    }

    fn trusting(ca: &[u8], server_name: &str) -> Tls {
        Tls {
            server_name: Some(server_name.to_string()),
            verify: true,
            ca: Some(TrustedCas { file: PathBuf::from("/test/ca.pem"), certificates: vec![ca.to_vec()] }),
        }
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";

    #[tokio::test]
    async fn https_verified_against_the_configured_ca() {
        let pki = pki();
        let tls = trusting(&pki.ca, "backend.test");
        let (result, head) = exchange_with(&https(&tls), Some(pki.acceptor.clone()), Answer::Pieces(vec![OK])).await;
        result.unwrap();
        assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");

        let wrong_name = trusting(&pki.ca, "other.test");
        let (result, _) = exchange_with(&https(&wrong_name), Some(pki.acceptor), Answer::Pieces(vec![OK])).await;
        let Err(ProbeError::Tls(message)) = result else { panic!("{result:?}") };
        assert!(message.contains("certificate"), "{message}");

        let (result, _) =
            exchange_with(&https(&tls), Some(pki.self_signed_acceptor.clone()), Answer::Pieces(vec![OK])).await;
        let Err(ProbeError::Tls(message)) = result else { panic!("{result:?}") };
        assert!(message.contains("UnknownIssuer"), "{message}");

        // Without verification the self-signed certificate does, but TLS is still required.
        let unverified = Tls { server_name: None, verify: false, ca: None };
        let (result, _) =
            exchange_with(&https(&unverified), Some(pki.self_signed_acceptor), Answer::Pieces(vec![OK])).await;
        result.unwrap();
        let (result, _) = exchange_with(&https(&unverified), None, Answer::Pieces(vec![OK])).await;
        assert!(matches!(result, Err(ProbeError::Tls(_))), "{result:?}");
    }
}
