//! The validator: a parsed file ([`raw`](super::raw)) checked value by value into the model
//! types. Every problem is recorded with its line, column and field, and validation goes on, so
//! one run reports them all.
//! - this file: the validator's tools, the file as a whole (limits over all VIPs) and the
//!   parsers of single values;
//! - [`instance`], [`vip`] (with its backends) and [`health`]: one section each.
//!
//! `[vip.admission]` is validated beside its types, in `config/admission.rs`.

mod health;
mod instance;
mod path;
mod vip;

use std::{collections::BTreeMap, net::IpAddr, ops::Range};

use lb_common::capacity::{MAX_BACKENDS, MAX_SOURCE_LIST_ENTRIES, MAX_TABLE_CHUNKS, MAX_VIPS, TABLE_CHUNK_ENTRIES};
use toml::Spanned;

use super::{Config, ConfigError, MAX_INTERFACE_NAME_LEN, MAX_NAME_LEN, Problem, Protocol, raw};

/// Problems reported of one file; past these the count of the others is (a file with thousands
/// of problems is usually one mistake repeated).
const MAX_PROBLEMS: usize = 100;

/// Validates `text`; `source_name` names it in errors.
pub(super) fn parse(text: &str, source_name: &str) -> Result<Config, ConfigError> {
    let mut v = Validator { text, line_starts: line_starts(text), problems: Vec::new(), omitted: 0 };
    let config = match toml::from_str::<raw::File>(text) {
        Ok(file) => v.config(file),
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let fields = path::Fields::of(text);
            v.problem(span.clone(), fields.at(span.start), e.message().to_string());
            None
        }
    };
    match config {
        Some(config) if v.problems.is_empty() => Ok(config),
        _ => Err(ConfigError { source_name: source_name.to_string(), problems: v.problems, omitted: v.omitted }),
    }
}

/// Where each line of `text` starts.
fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect()
}

/// The line and column just past the end of `text`.
pub(super) fn end_position(text: &str) -> (usize, usize) {
    line_and_column(&line_starts(text), text.len())
}

/// The 1-based line and column of byte `offset` of a text whose lines start at `line_starts`.
fn line_and_column(line_starts: &[usize], offset: usize) -> (usize, usize) {
    let line = line_starts.partition_point(|&start| start <= offset).max(1);
    (line, offset - line_starts[line - 1] + 1)
}

pub(super) struct Validator<'t> {
    text: &'t str,
    line_starts: Vec<usize>,
    problems: Vec<Problem>,
    /// Problems found past [`MAX_PROBLEMS`].
    omitted: usize,
}

impl Validator<'_> {
    pub(super) fn problem(&mut self, span: Range<usize>, field: &str, message: String) {
        if self.problems.len() >= MAX_PROBLEMS {
            self.omitted += 1;
            return;
        }
        let (line, column) = line_and_column(&self.line_starts, span.start.min(self.text.len()));
        self.problems.push(Problem { line, column, field: field.to_string(), message });
    }

    /// `value` if `check` accepts it, else records the problem it names.
    pub(super) fn check<T, U>(
        &mut self,
        value: &Spanned<T>,
        field: &str,
        check: impl FnOnce(&T) -> Result<U, String>,
    ) -> Option<U> {
        match check(value.get_ref()) {
            Ok(u) => Some(u),
            Err(message) => {
                self.problem(value.span(), field, message);
                None
            }
        }
    }

    /// What `check` makes of an optional `value`, `default` when it is absent.
    pub(super) fn optional<T, U>(
        &mut self,
        value: &Option<Spanned<T>>,
        field: &str,
        default: U,
        check: impl FnOnce(&T) -> Result<U, String>,
    ) -> Option<U> {
        match value {
            None => Some(default),
            Some(v) => self.check(v, field, check),
        }
    }

    /// An optional integer in `range`, `default` when absent.
    pub(super) fn ranged(
        &mut self,
        value: &Option<Spanned<i64>>,
        field: &str,
        range: Range<i64>,
        default: i64,
    ) -> Option<i64> {
        match value {
            None => Some(default),
            Some(v) => self.check(v, field, |n| {
                if range.contains(n) {
                    Ok(*n)
                } else {
                    Err(format!("{n} is out of range {}..={}", range.start, range.end - 1))
                }
            }),
        }
    }

    /// A backend at a VIP's address would have the balancer send traffic to itself.
    fn backends_that_are_vips(&mut self, file: &raw::File, vips: &[super::Vip]) {
        let addresses: BTreeMap<IpAddr, &str> = vips.iter().map(|v| (v.address, v.name.as_str())).collect();
        for (i, raw_vip) in file.vip.iter().enumerate() {
            for (j, b) in raw_vip.get_ref().backend.iter().enumerate() {
                let Ok(a) = b.get_ref().address.get_ref().parse::<IpAddr>() else { continue };
                if let Some(vip) = addresses.get(&a) {
                    self.problem(
                        b.get_ref().address.span(),
                        &format!("vip[{i}].backend[{j}].address"),
                        format!("{a} is the address of VIP {vip}; a backend is a server behind the balancer"),
                    );
                }
            }
        }
    }

    fn config(&mut self, file: raw::File) -> Option<Config> {
        let instance = self.instance(file.instance.get_ref());
        let mut vips = Vec::new();
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let mut keys: BTreeMap<(IpAddr, u16, Protocol), usize> = BTreeMap::new();
        let (mut table_chunks, mut tables_full) = (0, false);
        let (mut listed, mut lists_full) = (0, false);
        for (i, raw_vip) in file.vip.iter().enumerate() {
            let field = format!("vip[{i}]");
            let Some(vip) = self.vip(raw_vip.get_ref(), &field) else { continue };
            if let Some(first) = names.insert(vip.name.clone(), i) {
                self.problem(
                    raw_vip.get_ref().name.span(),
                    &format!("{field}.name"),
                    format!("\"{}\" is already the name of vip[{first}]; VIP names must be unique", vip.name),
                );
            }
            if let Some(first) = keys.insert((vip.address, vip.port, vip.protocol), i) {
                self.problem(
                    raw_vip.span(),
                    &field,
                    format!("vip[{first}] already serves {} port {} {}", vip.address, vip.port, vip.protocol),
                );
            }
            listed += vip.admission.listed();
            if listed > MAX_SOURCE_LIST_ENTRIES as usize && !lists_full {
                lists_full = true;
                self.problem(
                    raw_vip.get_ref().admission.as_ref().map_or(raw_vip.span(), Spanned::span),
                    &format!("{field}.admission"),
                    format!(
                        "with this VIP the source lists hold {listed} prefixes, more than the \
                         {MAX_SOURCE_LIST_ENTRIES} supported for all VIPs together"
                    ),
                );
            }
            table_chunks += vip.table_chunks();
            if table_chunks > MAX_TABLE_CHUNKS && !tables_full {
                tables_full = true;
                let span = raw_vip.get_ref().table_size.as_ref().map_or(raw_vip.span(), Spanned::span);
                self.problem(
                    span,
                    &format!("{field}.table_size"),
                    format!(
                        "with this VIP the tables need {table_chunks} chunks of {TABLE_CHUNK_ENTRIES} entries \
                         (two tables per VIP), more than the {MAX_TABLE_CHUNKS} supported; give VIPs with many \
                         backends a smaller table_size"
                    ),
                );
            }
            vips.push(vip);
        }
        self.backends_that_are_vips(&file, &vips);
        if file.vip.len() > MAX_VIPS as usize {
            self.problem(
                file.vip[MAX_VIPS as usize].span(),
                &format!("vip[{MAX_VIPS}]"),
                format!("{} VIPs, at most {MAX_VIPS} are supported", file.vip.len()),
            );
        }
        let bgp = match &file.bgp {
            None => Some(None),
            Some(b) => self.bgp(b.get_ref(), file.instance.get_ref().name.get_ref()).map(Some),
        };
        if self.problems.is_empty()
            && let Some(Some(bgp)) = &bgp
        {
            self.announcements(&file, bgp, &vips);
        }
        let config = Config { instance: instance?, bgp: bgp?, vips };
        if config.backend_count() > MAX_BACKENDS as usize {
            self.problem(
                0..0,
                "vip",
                format!("{} distinct backends, at most {MAX_BACKENDS} are supported", config.backend_count()),
            );
        }
        Some(config)
    }
}

pub(super) fn name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("\"{s}\" is not a valid name; use 1 to {MAX_NAME_LEN} of a-z, 0-9, '-' and '_'"))
    }
}

pub(super) fn interface_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > MAX_INTERFACE_NAME_LEN || s.contains(['/', ' ', '\0']) {
        Err(format!(
            "\"{s}\" is not a valid interface name (1 to {MAX_INTERFACE_NAME_LEN} characters, no '/' or spaces)"
        ))
    } else {
        Ok(s.to_string())
    }
}

/// A host's address: unicast, not unspecified or loopback (a VIP or a backend another host
/// reaches).
pub(super) fn address(s: &str) -> Result<IpAddr, String> {
    let address = s.parse::<IpAddr>().map_err(|_| format!("\"{s}\" is not an IPv4 or IPv6 address"))?;
    let broadcast = matches!(address, IpAddr::V4(a) if a.is_broadcast());
    let kind = if address.is_unspecified() {
        "the unspecified address"
    } else if address.is_multicast() || broadcast {
        "a multicast or broadcast address"
    } else if address.is_loopback() {
        "a loopback address"
    } else {
        return Ok(address);
    };
    Err(format!("{address} is {kind}, which no other host can reach; use a host's unicast address"))
}

pub(super) fn prefix<A: std::str::FromStr>(s: &str) -> Result<(A, u8), String> {
    let (addr, len) =
        s.split_once('/').ok_or_else(|| format!("\"{s}\" is not a prefix; write it as ADDRESS/LENGTH"))?;
    let addr = addr.parse::<A>().map_err(|_| format!("\"{addr}\" is not an address of the prefix's family"))?;
    let len = len.parse::<u8>().map_err(|_| format!("\"{len}\" is not a prefix length"))?;
    Ok((addr, len))
}

pub(super) use crate::label::parse_hex as hex;

/// A flow hash key: 32 hexadecimal digits (128 bits), not all zero.
pub(super) fn hash_key(s: &str) -> Result<lb_common::flow::HashKey, String> {
    let digits: String = s.chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
    if digits.len() != 32 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err("is not 32 hexadecimal digits (a 128-bit key); make one with \
                    `od -An -tx1 -N16 /dev/urandom | tr -d ' \\n'` and give every balancer of the fleet the same"
            .into());
    }
    let key = [
        u64::from_str_radix(&digits[..16], 16).expect("checked"),
        u64::from_str_radix(&digits[16..], 16).expect("checked"),
    ];
    if key == [0, 0] {
        return Err("is all zeros, which is no secret; use random digits".into());
    }
    Ok(key)
}

pub(super) fn mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("\"{s}\" is not a MAC address; write it as 02:00:00:00:00:01");
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut out = [0u8; 6];
    for (o, p) in out.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(out)
}
