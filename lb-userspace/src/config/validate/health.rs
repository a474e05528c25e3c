//! `[vip.health]` and `[vip.backend.health]`: health checks.

use toml::Spanned;

use super::{Validator, hex};
use crate::config::{CHECK_INTERVAL_MS, CHECK_RISE_FALL, CheckKind, HealthCheck, HttpMethod, raw};

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
            "http" => self.http(h, field),
            "udp" => self.udp(raw, field),
            other => {
                self.problem(
                    h.kind.span(),
                    &format!("{field}.kind"),
                    format!("\"{other}\" is not a check kind; use \"tcp\", \"http\" or \"udp\""),
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
        let udp_only = [("payload_hex", h.payload_hex.is_some()), ("expect_prefix_hex", h.expect_prefix_hex.is_some())];
        let kind_name = h.kind.get_ref().as_str();
        let misplaced: Vec<&str> = match kind_name {
            "tcp" => http_only.iter().chain(udp_only.iter()).filter(|(_, set)| *set).map(|(n, _)| *n).collect(),
            "http" => udp_only.iter().filter(|(_, set)| *set).map(|(n, _)| *n).collect(),
            "udp" => http_only.iter().filter(|(_, set)| *set).map(|(n, _)| *n).collect(),
            _ => Vec::new(),
        };
        if !misplaced.is_empty() {
            self.problem(
                raw.span(),
                field,
                format!("{} do(es) not apply to a {kind_name} check", misplaced.join(", ")),
            );
        }
    }

    fn http(&mut self, h: &raw::Health, field: &str) -> Option<CheckKind> {
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
        Some(CheckKind::Http {
            method: method?,
            path: path?,
            host: host?,
            expect_status: expect_status? as u16,
            expect_body,
        })
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
