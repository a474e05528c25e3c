//! `[vip.health]` and `[vip.backend.health]`: health checks.

use toml::Spanned;

use super::{Validator, hex};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject as _};

use crate::config::{CHECK_INTERVAL_MS, CHECK_RISE_FALL, CheckKind, HealthCheck, HttpMethod, Tls, TrustedCas, raw};

/// The CA certificates of the PEM file at `path`, each one accepted by rustls as a trust anchor.
fn read_cas(path: &str) -> Result<TrustedCas, String> {
    let file = std::path::PathBuf::from(path);
    if !file.is_absolute() {
        return Err(format!("\"{path}\" is not an absolute path"));
    }
    let text = std::fs::read(&file).map_err(|e| format!("cannot read {path}: {e}"))?;
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{path} is not a PEM file of certificates: {e}"))?;
    if certificates.is_empty() {
        return Err(format!("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, certificate) in certificates.iter().enumerate() {
        roots
            .add(certificate.clone())
            .map_err(|e| format!("certificate {} of {path} cannot be a trust anchor: {e}", i + 1))?;
    }
    Ok(TrustedCas { file, certificates: certificates.iter().map(|c| c.to_vec()).collect() })
}

impl Validator<'_> {
    /// A check of a VIP serving `vip_port` (0: every port, and the check names its own).
    pub(in crate::config) fn health(
        &mut self,
        raw: &Spanned<raw::Health>,
        field: &str,
        vip_port: i64,
    ) -> Option<HealthCheck> {
        let h = raw.get_ref();
        let port = match &h.port {
            Some(p) => self.check(p, &format!("{field}.port"), |p| match u16::try_from(*p) {
                Ok(port) if port > 0 => Ok(port),
                _ => Err(format!("{p} is out of range 1..=65535")),
            }),
            None if vip_port > 0 => u16::try_from(vip_port).ok(),
            None => {
                self.problem(raw.span(), field, "an all-ports VIP's check needs a `port`".into());
                None
            }
        };
        let interval = self.ranged(&h.interval_ms, &format!("{field}.interval_ms"), CHECK_INTERVAL_MS, 1000);
        let timeout = match (&h.timeout_ms, interval) {
            (Some(t), Some(i)) => self.check(t, &format!("{field}.timeout_ms"), |t| {
                if (10..=i).contains(t) {
                    Ok(*t)
                } else {
                    Err(format!("{t} is out of range 10..={i} (at most the interval)"))
                }
            }),
            (None, Some(i)) => Some((i / 2).max(10)),
            (_, None) => None,
        };
        let rise = self.ranged(&h.rise, &format!("{field}.rise"), CHECK_RISE_FALL, 2);
        let fall = self.ranged(&h.fall, &format!("{field}.fall"), CHECK_RISE_FALL, 3);
        let tunnel = h.tunnel.as_ref().is_some_and(|t| *t.get_ref());
        self.misplaced_fields(raw, field);
        let kind = match h.kind.get_ref().as_str() {
            "tcp" => Some(CheckKind::Tcp),
            "http" => self.http(h, field, false),
            "https" => self.http(h, field, true),
            "udp" => self.udp(raw, field),
            "quic" => Some(CheckKind::Quic),
            other => {
                self.problem(
                    h.kind.span(),
                    &format!("{field}.kind"),
                    format!("\"{other}\" is not a check kind; use \"tcp\", \"http\", \"https\", \"udp\" or \"quic\""),
                );
                None
            }
        };
        Some(HealthCheck {
            kind: kind?,
            port: port?,
            interval: std::time::Duration::from_millis(interval? as u64),
            timeout: std::time::Duration::from_millis(timeout? as u64),
            rise: rise? as u32,
            fall: fall? as u32,
            tunnel,
        })
    }

    /// Fields of another kind of check than this one's.
    fn misplaced_fields(&mut self, raw: &Spanned<raw::Health>, field: &str) {
        let h = raw.get_ref();
        let http_only = [
            ("method", h.method.is_some()),
            ("path", h.path.is_some()),
            ("host", h.host.is_some()),
            ("expect_status", h.expect_status.is_some()),
            ("expect_body", h.expect_body.is_some()),
        ];
        let https_only = [
            ("tls_server_name", h.tls_server_name.is_some()),
            ("tls_verify", h.tls_verify.is_some()),
            ("tls_ca_file", h.tls_ca_file.is_some()),
        ];
        let udp_only = [("payload_hex", h.payload_hex.is_some()), ("expect_prefix_hex", h.expect_prefix_hex.is_some())];
        let kind_name = h.kind.get_ref().as_str();
        let not_for: &[&[(&str, bool)]] = match kind_name {
            "tcp" | "quic" => &[&http_only, &https_only, &udp_only],
            "http" => &[&https_only, &udp_only],
            "https" => &[&udp_only],
            "udp" => &[&http_only, &https_only],
            _ => &[],
        };
        let misplaced: Vec<&str> =
            not_for.iter().flat_map(|fields| fields.iter()).filter(|(_, set)| *set).map(|(n, _)| *n).collect();
        if !misplaced.is_empty() {
            self.problem(
                raw.span(),
                field,
                format!("{} do(es) not apply to a {kind_name} check", misplaced.join(", ")),
            );
        }
    }

    fn http(&mut self, h: &raw::Health, field: &str, https: bool) -> Option<CheckKind> {
        let method = self.optional(&h.method, &format!("{field}.method"), HttpMethod::Get, |m| match m.as_str() {
            "GET" => Ok(HttpMethod::Get),
            "HEAD" => Ok(HttpMethod::Head),
            other => Err(format!("\"{other}\" is not a check method; use \"GET\" or \"HEAD\"")),
        });
        let path = self.optional(&h.path, &format!("{field}.path"), "/".to_string(), |p| {
            if p.starts_with('/') && !p.contains(char::is_whitespace) {
                Ok(p.clone())
            } else {
                Err(format!("\"{p}\" is not a request path (starts with /, no spaces)"))
            }
        });
        let host = self.optional(&h.host, &format!("{field}.host"), None, |v| {
            if !v.is_empty() && !v.contains(char::is_whitespace) {
                Ok(Some(v.clone()))
            } else {
                Err(format!("\"{v}\" is not a host name"))
            }
        });
        let expect_status = self.ranged(&h.expect_status, &format!("{field}.expect_status"), 100..600, 200);
        let expect_body = h.expect_body.as_ref().map(|b| b.get_ref().clone());
        let tls = if https { Some(self.tls(h, field)?) } else { None };
        Some(CheckKind::Http {
            method: method?,
            path: path?,
            host: host?,
            expect_status: expect_status? as u16,
            expect_body,
            tls,
        })
    }

    fn tls(&mut self, h: &raw::Health, field: &str) -> Option<Tls> {
        let server_name = self.optional(&h.tls_server_name, &format!("{field}.tls_server_name"), None, |name| {
            ServerName::try_from(name.as_str())
                .map(|_| Some(name.clone()))
                .map_err(|_| format!("\"{name}\" is not a DNS name or an IP address"))
        });
        let verify = h.tls_verify.as_ref().is_none_or(|v| *v.get_ref());
        let ca = match &h.tls_ca_file {
            None => Some(None),
            Some(file) if !verify => {
                self.problem(
                    file.span(),
                    &format!("{field}.tls_ca_file"),
                    "has no use with `tls_verify = false`; remove one of them".into(),
                );
                None
            }
            Some(file) => self.check(file, &format!("{field}.tls_ca_file"), |path| read_cas(path).map(Some)),
        };
        Some(Tls { server_name: server_name?, verify, ca: ca? })
    }

    fn udp(&mut self, raw: &Spanned<raw::Health>, field: &str) -> Option<CheckKind> {
        let h = raw.get_ref();
        let payload = match &h.payload_hex {
            None => {
                self.problem(raw.span(), field, "a udp check needs `payload_hex`, the datagram to send".into());
                None
            }
            Some(p) => self.check(p, &format!("{field}.payload_hex"), |p| {
                hex(p).and_then(|b| if b.is_empty() { Err("is empty".into()) } else { Ok(b) })
            }),
        };
        let expect_prefix =
            self.optional(&h.expect_prefix_hex, &format!("{field}.expect_prefix_hex"), Vec::new(), |p| hex(p));
        Some(CheckKind::Udp { payload: payload?, expect_prefix: expect_prefix? })
    }
}
