//! YAML as kubectl reads and writes it.
//!
//! kubectl splits a stream into documents and converts each with `sigs.k8s.io/yaml`:
//! goyaml v2 decodes the document into Go values with YAML 1.1 scalar rules (`0755` is
//! octal 493, `yes`/`on`/`y` are true, `1e3` is the float 1000, `1_000` is 1000, dates
//! stay strings, integers beyond 64 bits become floats), then map keys are turned into
//! strings (`yes:` → `"true"`, `0755:` → `"493"`) and the result is marshalled as JSON
//! (`1000.0` → `1000`). [`read`] gives exactly that JSON value for each document.
//!
//! The values are built from the events of serde-saphyr's YAML parser (granit-parser)
//! with goyaml v2's rules: serde-saphyr's own scalar inference does not follow them even
//! with its YAML 1.1 options (`yEs` is true there and a string in goyaml, `!foo 0755` a
//! number there, keys are not resolved at all, `!!timestamp` is refused).
//!
//! [`write`] prints YAML that kubectl reads back as the same JSON: every string that
//! YAML 1.1 would read as something else (`"yes"`, `"0755"`, `"1e3"`, `"~"`, `"<<"`, …)
//! is double-quoted.

use std::collections::{HashMap, HashSet};

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Number, Value};
use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, Span, Tag};

/// A document kubectl would not read, or could not convert to JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadError {
    /// 1-based, counting every document of the stream.
    pub document: usize,
    pub line: usize,
    /// 1-based.
    pub column: usize,
    pub message: String,
}

/// A scalar as goyaml v2 resolves it when decoding into `interface{}`.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(String),
}

const CORE: &str = "tag:yaml.org,2002:";

/// The tag of a node, as goyaml v2 tells them apart.
#[derive(Clone, Copy, Debug, PartialEq)]
enum TagKind<'a> {
    /// No tag.
    None,
    /// `!`: goyaml resolves nothing (the value is a string).
    NonSpecific,
    /// `!!name` (`tag:yaml.org,2002:name`).
    Core(&'a str),
    /// Any other tag: the value is a string.
    Other,
}

fn tag_kind(tag: Option<&Tag>) -> TagKind<'_> {
    let Some(tag) = tag else {
        return TagKind::None;
    };
    if tag.handle() == CORE {
        return TagKind::Core(tag.suffix());
    }
    if tag.handle() == "!" && tag.suffix().is_empty() {
        return TagKind::NonSpecific;
    }
    TagKind::Other
}

/// goyaml v2's `resolve("", s)`: what a plain, untagged scalar means.
pub fn resolve_plain(s: &str) -> Scalar {
    match resolve(None, s) {
        Ok(Resolved::Merge) => Scalar::Str(s.to_owned()),
        Ok(Resolved::Value(v)) => v,
        // No error without a tag.
        Err(_) => Scalar::Str(s.to_owned()),
    }
}

enum Resolved {
    Value(Scalar),
    /// `<<` (a string as a value; the merge key as a key).
    Merge,
}

/// The first byte's hint in goyaml v2's resolve table.
fn hint(s: &str) -> Option<u8> {
    match s.as_bytes().first() {
        None => Some(b'N'),
        Some(b'+' | b'-') => Some(b'S'),
        Some(b'0'..=b'9') => Some(b'D'),
        Some(b'y' | b'Y' | b'n' | b'N' | b't' | b'T' | b'f' | b'F' | b'o' | b'O' | b'~') => {
            Some(b'M')
        }
        Some(b'.') => Some(b'.'),
        Some(_) => None,
    }
}

fn lookup(s: &str) -> Option<Resolved> {
    let v = match s {
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            Scalar::Bool(true)
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            Scalar::Bool(false)
        }
        "" | "~" | "null" | "Null" | "NULL" => Scalar::Null,
        ".nan" | ".NaN" | ".NAN" => Scalar::Float(f64::NAN),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => Scalar::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => Scalar::Float(f64::NEG_INFINITY),
        "<<" => return Some(Resolved::Merge),
        _ => return None,
    };
    Some(Resolved::Value(v))
}

/// Go's `strconv.ParseUint(s, base, 64)`; base 0 takes the prefix (`0x`, `0o`, `0b`, `0`).
fn go_parse_uint(s: &str, base: u32) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let (digits, radix) = if base != 0 {
        (s, base)
    } else if let Some(rest) = s.strip_prefix('0') {
        let second = s.as_bytes().get(1).map(|b| b | 0x20);
        match second {
            Some(b'b') if s.len() >= 3 => (&s[2..], 2),
            Some(b'o') if s.len() >= 3 => (&s[2..], 8),
            Some(b'x') if s.len() >= 3 => (&s[2..], 16),
            _ => (rest, 8),
        }
    } else {
        (s, 10)
    };
    let mut n: u64 = 0;
    for c in digits.chars() {
        let d = c.to_digit(radix)?;
        n = n.checked_mul(u64::from(radix))?.checked_add(u64::from(d))?;
    }
    Some(n)
}

/// Go's `strconv.ParseInt(s, base, 64)`.
fn go_parse_int(s: &str, base: u32) -> Option<i64> {
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'+') => (false, &s[1..]),
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    let u = go_parse_uint(rest, base)?;
    if negative {
        0i64.checked_sub_unsigned(u)
    } else {
        i64::try_from(u).ok()
    }
}

/// goyaml v2's `yamlStyleFloat`: `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn yaml_style_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            digits(&mut i);
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// Go's `strconv.ParseFloat(s, 64)` for the decimal spellings `yaml_style_float` admits:
/// out of range is an error (not infinity).
fn go_parse_float(s: &str) -> Option<f64> {
    if !yaml_style_float(s) {
        return None;
    }
    s.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// goyaml v2's `resolve(tag, in)` for the tags it resolves, with its final check that a
/// tagged value is of the tag's type (`!!float 1` is the float 1).
fn resolve(tag: Option<&str>, s: &str) -> Result<Resolved, String> {
    let tag = tag.unwrap_or("");
    let resolved = if tag == "str" {
        Resolved::Value(Scalar::Str(s.to_owned()))
    } else {
        resolve_untyped(s)
    };
    let rtag = match &resolved {
        Resolved::Merge => "merge",
        Resolved::Value(Scalar::Null) => "null",
        Resolved::Value(Scalar::Bool(_)) => "bool",
        Resolved::Value(Scalar::Int(_) | Scalar::Uint(_)) => "int",
        Resolved::Value(Scalar::Float(_)) => "float",
        Resolved::Value(Scalar::Str(_)) if tag == "timestamp" && is_go_timestamp(s) => "timestamp",
        Resolved::Value(Scalar::Str(_)) => "str",
    };
    if tag.is_empty() || tag == rtag || tag == "str" {
        return Ok(resolved);
    }
    if tag == "float" {
        match resolved {
            Resolved::Value(Scalar::Int(i)) => return Ok(Resolved::Value(Scalar::Float(i as f64))),
            Resolved::Value(Scalar::Uint(u)) => {
                return Ok(Resolved::Value(Scalar::Float(u as f64)));
            }
            _ => {}
        }
    }
    Err(format!("cannot decode !!{rtag} `{s}` as a !!{tag}"))
}

fn resolve_untyped(s: &str) -> Resolved {
    let string = || Resolved::Value(Scalar::Str(s.to_owned()));
    let Some(hint) = hint(s) else {
        return string();
    };
    if let Some(item) = lookup(s) {
        return item;
    }
    match hint {
        b'.' => {
            if let Some(f) = go_parse_float(s) {
                return Resolved::Value(Scalar::Float(f));
            }
        }
        b'D' | b'S' => {
            // goyaml tries a timestamp first (untagged or !!timestamp): in interface{}
            // it is a string, and no timestamp reads as a number, so nothing to do.
            let plain = s.replace('_', "");
            if let Some(i) = go_parse_int(&plain, 0) {
                return Resolved::Value(Scalar::Int(i));
            }
            if let Some(u) = go_parse_uint(&plain, 0) {
                return Resolved::Value(Scalar::Uint(u));
            }
            if let Some(f) = go_parse_float(&plain) {
                return Resolved::Value(Scalar::Float(f));
            }
            if let Some(digits) = plain.strip_prefix("0b") {
                if let Some(i) = go_parse_int(digits, 2) {
                    return Resolved::Value(Scalar::Int(i));
                }
                if let Some(u) = go_parse_uint(digits, 2) {
                    return Resolved::Value(Scalar::Uint(u));
                }
            } else if let Some(digits) = plain.strip_prefix("-0b")
                && let Some(i) = go_parse_int(&format!("-{digits}"), 2)
            {
                return Resolved::Value(Scalar::Int(i));
            }
        }
        _ => {}
    }
    string()
}

/// goyaml v2's `parseTimestamp`: `YYYY-M-D`, `YYYY-M-D h:m:s[.frac]`, or
/// `YYYY-M-D[Tt]h:m:s[.frac](Z|±hh:mm)`, each field in range.
fn is_go_timestamp(s: &str) -> bool {
    fn number(s: &str, min: usize, max: usize) -> Option<u32> {
        (s.len() >= min && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    }
    let (date, time, zoned) = match s.find(['T', 't', ' ']) {
        None => (s, None, false),
        Some(i) => (&s[..i], Some(&s[i + 1..]), &s[i..=i] != " "),
    };
    let mut parts = date.split('-');
    let (Some(y), Some(m), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Some(year), Some(month), Some(day)) = (number(y, 4, 4), number(m, 1, 2), number(d, 1, 2))
    else {
        return false;
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    if day == 0 || day > days {
        return false;
    }
    let Some(time) = time else {
        return true;
    };
    let (clock, zone) = if zoned {
        match time.find(['Z', '+', '-']) {
            Some(i) => (&time[..i], &time[i..]),
            None => return false,
        }
    } else {
        (time, "")
    };
    if zoned && zone != "Z" {
        let offset = &zone[1..];
        let Some((h, m)) = offset.split_once(':') else {
            return false;
        };
        if !matches!((number(h, 2, 2), number(m, 2, 2)), (Some(h), Some(m)) if h < 24 && m < 60) {
            return false;
        }
    }
    let (hms, fraction) = match clock.split_once('.') {
        Some((hms, f)) => (hms, Some(f)),
        None => (clock, None),
    };
    if fraction.is_some_and(|f| number(f, 1, 9).is_none()) {
        return false;
    }
    let mut fields = hms.split(':');
    let (Some(h), Some(m), Some(sec), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return false;
    };
    matches!(
        (number(h, 1, 2), number(m, 1, 2), number(sec, 1, 2)),
        (Some(h), Some(m), Some(s)) if h < 24 && m < 60 && s < 60
    )
}

/// Go's `encoding/json` text for a float, read back as JSON: `1000.0` is the integer
/// 1000, `1e21` stays a float, NaN and infinities are refused.
pub fn json_number(f: f64) -> Option<Number> {
    if !f.is_finite() {
        return None;
    }
    let abs = f.abs();
    let text = if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        format!("{f:e}")
    } else {
        format!("{f}")
    };
    // The text decides integer or float, as Go's encoding/json prints it; a float keeps
    // `f` itself (parsing the text back can land one ULP off, and the output would then
    // not read back the same: found by fuzzing with `11e32`).
    let number: Number = serde_json::from_str(&text).ok()?;
    if number.is_f64() {
        Number::from_f64(f)
    } else {
        Some(number)
    }
}

/// Go's `strconv.FormatFloat(f, 'g', -1, 32)`, as sigs.k8s.io/yaml turns a float key
/// into a string (with `.inf`, `-.inf`, `.nan`).
fn go_float_key(f: f64) -> String {
    #[allow(clippy::cast_possible_truncation)] // Go rounds to float32 here too.
    let f = f as f32;
    if f.is_nan() {
        return ".nan".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { ".inf" } else { "-.inf" }.to_owned();
    }
    // Rust's shortest round-trip digits for an f32, as d.ddde±x.
    let text = format!("{f:e}");
    let (negative, text) = match text.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, text.as_str()),
    };
    let Some((mantissa, exponent)) = text.split_once('e') else {
        return text.to_owned();
    };
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if negative { "-" } else { "" };
    if !(-4..6).contains(&exponent) {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() { "" } else { "." };
        let esign = if exponent < 0 { '-' } else { '+' };
        return format!(
            "{sign}{first}{dot}{rest}e{esign}{:02}",
            exponent.unsigned_abs()
        );
    }
    // The decimal point after `point` digits.
    let point = exponent + 1;
    let body = if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else {
        let point = point.unsigned_abs() as usize;
        if point >= digits.len() {
            format!("{digits}{}", "0".repeat(point - digits.len()))
        } else {
            format!("{}.{}", &digits[..point], &digits[point..])
        }
    };
    format!("{sign}{body}")
}

/// A scalar used as a map key, as sigs.k8s.io/yaml converts it.
fn key_string(key: &Scalar) -> Result<String, String> {
    match key {
        Scalar::Str(s) => Ok(s.clone()),
        Scalar::Int(i) => Ok(i.to_string()),
        Scalar::Float(f) => Ok(go_float_key(*f)),
        Scalar::Bool(b) => Ok(b.to_string()),
        Scalar::Null => Err("a null map key (kubectl cannot convert it to JSON)".to_owned()),
        Scalar::Uint(u) => Err(format!(
            "the map key {u} is beyond 64-bit signed integers (kubectl cannot convert it to JSON)"
        )),
    }
}

fn scalar_value(s: Scalar) -> Result<Value, String> {
    Ok(match s {
        Scalar::Null => Value::Null,
        Scalar::Bool(b) => Value::Bool(b),
        Scalar::Int(i) => Value::from(i),
        Scalar::Uint(u) => Value::from(u),
        Scalar::Float(f) => Value::Number(json_number(f).ok_or_else(|| {
            format!("{f} is not a JSON number (kubectl refuses .inf and .nan values too)")
        })?),
        Scalar::Str(s) => Value::String(s),
    })
}

fn located(document: usize, span: &Span, message: impl Into<String>) -> ReadError {
    ReadError {
        document,
        line: span.start.line(),
        column: span.start.col() + 1,
        message: message.into(),
    }
}

/// What an anchor stands for.
#[derive(Clone)]
enum Anchored {
    Scalar(Scalar),
    /// A collection and how many nodes it holds.
    Node(Value, usize),
}

/// Nodes in one document, aliases expanded: an alias bomb stops here, not in memory.
pub const MAX_NODES: usize = 1_000_000;
/// Nesting of collections (kubectl's goyaml stops at 10,000; manifests need a few dozen).
pub const MAX_DEPTH: usize = 1_000;

enum Key {
    Plain(String),
    Merge,
}

#[allow(clippy::large_enum_variant)] // One frame per level of nesting.
enum Frame {
    Seq {
        items: Vec<Value>,
        anchor: usize,
        /// `Builder::nodes` before this collection.
        nodes_before: usize,
    },
    Map {
        map: Map<String, Value>,
        /// Keys given in this mapping itself (not merged in).
        explicit: HashSet<String>,
        key: Option<(Key, Span)>,
        anchor: usize,
        nodes_before: usize,
    },
}

/// A complete node handed to its parent.
enum Node {
    Scalar { value: Scalar, merge: bool },
    Collection(Value),
}

struct Builder {
    document: usize,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Anchored>,
    root: Option<Value>,
    /// Nodes built in this document so far.
    nodes: usize,
}

impl Builder {
    fn error(&self, span: &Span, message: impl Into<String>) -> ReadError {
        located(self.document, span, message)
    }

    fn push(&mut self, node: Node, span: &Span) -> Result<(), ReadError> {
        let document = self.document;
        match self.stack.last_mut() {
            None => {
                let value = match node {
                    Node::Scalar { value, .. } => {
                        scalar_value(value).map_err(|m| located(document, span, m))?
                    }
                    Node::Collection(v) => v,
                };
                self.root = Some(value);
            }
            Some(Frame::Seq { items, .. }) => {
                let value = match node {
                    Node::Scalar { value, .. } => {
                        scalar_value(value).map_err(|m| located(document, span, m))?
                    }
                    Node::Collection(v) => v,
                };
                items.push(value);
            }
            Some(Frame::Map {
                map, explicit, key, ..
            }) => match key.take() {
                None => {
                    let k = match node {
                        Node::Scalar { merge: true, .. } => Key::Merge,
                        Node::Scalar { value, .. } => {
                            Key::Plain(key_string(&value).map_err(|m| located(document, span, m))?)
                        }
                        Node::Collection(_) => {
                            return Err(located(
                                document,
                                span,
                                "a mapping or sequence as a map key",
                            ));
                        }
                    };
                    *key = Some((k, *span));
                }
                Some((Key::Plain(k), key_span)) => {
                    let value = match node {
                        Node::Scalar { value, .. } => {
                            scalar_value(value).map_err(|m| located(document, span, m))?
                        }
                        Node::Collection(v) => v,
                    };
                    if !explicit.insert(k.clone()) {
                        let message = format!(
                            "the key {k:?} is given twice (kubectl would keep one of them)"
                        );
                        return Err(located(document, &key_span, message));
                    }
                    map.insert(k, value);
                }
                Some((Key::Merge, key_span)) => {
                    // goyaml v2 merges in place: what it merges replaces keys given before
                    // the `<<` in the same mapping; of several maps, the first wins.
                    let sources = match node {
                        Node::Collection(Value::Object(m)) => vec![m],
                        Node::Collection(Value::Array(items))
                            if items.iter().all(Value::is_object) =>
                        {
                            items
                                .into_iter()
                                .rev()
                                .filter_map(|v| match v {
                                    Value::Object(m) => Some(m),
                                    _ => None,
                                })
                                .collect()
                        }
                        _ => {
                            return Err(located(
                                document,
                                &key_span,
                                "map merge requires map or sequence of maps as the value",
                            ));
                        }
                    };
                    for source in sources {
                        for (k, v) in source {
                            map.insert(k, v);
                        }
                    }
                }
            },
        }
        Ok(())
    }

    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }

    /// Counts `n` more nodes against [`MAX_NODES`].
    fn count(&mut self, n: usize, span: &Span) -> Result<(), ReadError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(self.error(
                span,
                format!("more than {MAX_NODES} nodes once aliases are expanded (an alias bomb?)"),
            ));
        }
        Ok(())
    }

    fn open(&mut self, span: &Span) -> Result<usize, ReadError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.error(
                span,
                format!("collections nested more than {MAX_DEPTH} deep"),
            ));
        }
        let before = self.nodes;
        self.count(1, span)?;
        Ok(before)
    }

    fn event(&mut self, event: Event<'_>, span: &Span) -> Result<(), ReadError> {
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                self.count(1, span)?;
                let kind = tag_kind(tag.as_deref());
                let plain = style == ScalarStyle::Plain;
                let merge = text == "<<"
                    && ((kind == TagKind::None && plain) || kind == TagKind::Core("merge"));
                let value = match kind {
                    TagKind::None if plain => resolve_plain(&text),
                    TagKind::None | TagKind::NonSpecific | TagKind::Other => {
                        Scalar::Str(text.clone().into_owned())
                    }
                    TagKind::Core("binary") => {
                        Scalar::Str(decode_binary(&text).ok_or_else(|| {
                            self.error(span, "!!binary value contains invalid base64 data")
                        })?)
                    }
                    TagKind::Core(
                        t @ ("str" | "bool" | "int" | "float" | "null" | "timestamp"),
                    ) => match resolve(Some(t), &text).map_err(|m| self.error(span, m))? {
                        Resolved::Merge => Scalar::Str(text.clone().into_owned()),
                        Resolved::Value(v) => v,
                    },
                    TagKind::Core(_) => Scalar::Str(text.clone().into_owned()),
                };
                if anchor != 0 {
                    self.anchors.insert(anchor, Anchored::Scalar(value.clone()));
                }
                self.push(Node::Scalar { value, merge }, span)
            }
            Event::SequenceStart(..) | Event::MappingStart(..) if self.expecting_key() => {
                Err(self.error(span, "a mapping or sequence as a map key"))
            }
            Event::SequenceStart(_, anchor, _) => {
                let nodes_before = self.open(span)?;
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    anchor,
                    nodes_before,
                });
                Ok(())
            }
            Event::MappingStart(_, anchor, _) => {
                let nodes_before = self.open(span)?;
                self.stack.push(Frame::Map {
                    map: Map::new(),
                    explicit: HashSet::new(),
                    key: None,
                    anchor,
                    nodes_before,
                });
                Ok(())
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (value, anchor, nodes_before) = match self.stack.pop() {
                    Some(Frame::Seq {
                        items,
                        anchor,
                        nodes_before,
                    }) => (Value::Array(items), anchor, nodes_before),
                    Some(Frame::Map {
                        map,
                        anchor,
                        nodes_before,
                        ..
                    }) => (Value::Object(map), anchor, nodes_before),
                    None => return Err(self.error(span, "unbalanced collection end")),
                };
                if anchor != 0 {
                    let size = self.nodes - nodes_before;
                    self.anchors
                        .insert(anchor, Anchored::Node(value.clone(), size));
                }
                self.push(Node::Collection(value), span)
            }
            Event::Alias(id) => {
                let size = match self.anchors.get(&id) {
                    Some(Anchored::Scalar(_)) => 1,
                    Some(Anchored::Node(_, size)) => *size,
                    None => return Err(self.error(span, "an alias to an unknown anchor")),
                };
                // Counted before the copy is made.
                self.count(size, span)?;
                let node = match self.anchors.get(&id) {
                    Some(Anchored::Scalar(s)) => Node::Scalar {
                        value: s.clone(),
                        merge: false,
                    },
                    Some(Anchored::Node(v, _)) => Node::Collection(v.clone()),
                    None => return Err(self.error(span, "an alias to an unknown anchor")),
                };
                if matches!(node, Node::Collection(_)) && self.expecting_key() {
                    return Err(self.error(span, "a mapping or sequence as a map key"));
                }
                self.push(node, span)
            }
            _ => Ok(()),
        }
    }
}

fn decode_binary(text: &str) -> Option<String> {
    use base64::Engine as _;
    let compact: String = text.chars().filter(|c| *c != '\n' && *c != '\r').collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Every document of a YAML (or JSON) stream as kubectl converts it to JSON, the null
/// and empty ones included (as `Value::Null`).
///
/// Refused: YAML syntax errors, documents of more than [`MAX_NODES`] nodes with aliases
/// expanded or nested deeper than [`MAX_DEPTH`], keys given twice (goyaml v2 would
/// silently keep the last), and what kubectl cannot convert to JSON (`.inf`/`.nan`
/// values, null keys, bad `!!int`/`!!binary`/... values, merges of non-maps).
pub fn read(input: &str) -> Result<Vec<Value>, ReadError> {
    let mut builder = Builder {
        document: 0,
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        nodes: 0,
    };
    let mut docs = Vec::new();
    for item in Parser::new_from_str(input) {
        let (event, span) = item.map_err(|e| ReadError {
            document: builder.document.max(1),
            line: e.marker().line(),
            column: e.marker().col() + 1,
            message: e.info(),
        })?;
        match event {
            Event::DocumentStart(..) => {
                builder.document += 1;
                builder.stack.clear();
                builder.anchors.clear();
                builder.root = None;
                builder.nodes = 0;
            }
            Event::DocumentEnd => {
                docs.push(builder.root.take().unwrap_or(Value::Null));
            }
            event => builder.event(event, &span)?,
        }
    }
    Ok(docs)
}

/// Whether a string must be double-quoted for goyaml v2 to read it as the same string:
/// it would resolve as something else plain, holds what YAML 1.1 takes as a line break,
/// or has a line starting with a tab (libyaml refuses that in a block scalar, where the
/// serializer would put a multi-line string).
fn needs_quotes(s: &str) -> bool {
    !matches!(resolve_plain(s), Scalar::Str(_))
        || s == "<<"
        || s.contains(['\u{85}', '\u{2028}', '\u{2029}', '\u{feff}'])
        || (s.contains('\n') && s.split('\n').any(|line| line.starts_with('\t')))
}

/// A JSON value that serializes as YAML kubectl reads back as the same value.
pub struct Yaml11<'a>(pub &'a Value);

struct Text<'a>(&'a str);

impl Serialize for Text<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if needs_quotes(self.0) {
            serde_saphyr::DoubleQuoted(self.0).serialize(serializer)
        } else {
            serializer.serialize_str(self.0)
        }
    }
}

impl Serialize for Yaml11<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Null => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    serializer.serialize_u64(u)
                } else if let Some(i) = n.as_i64() {
                    serializer.serialize_i64(i)
                } else {
                    serializer.serialize_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => Text(s).serialize(serializer),
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&Yaml11(item))?;
                }
                seq.end()
            }
            Value::Object(map) => {
                let mut out = serializer.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    out.serialize_entry(&Text(k), &Yaml11(v))?;
                }
                out.end()
            }
        }
    }
}

/// The documents as a YAML stream that kubectl reads back as the same JSON values.
pub fn write(docs: &[Value]) -> Result<String, serde_saphyr::SerializeError> {
    let docs: Vec<Yaml11<'_>> = docs.iter().map(Yaml11).collect();
    serde_saphyr::to_string_multiple(&docs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_scalars_resolve_as_goyaml_v2_resolves_them() {
        use Scalar::*;
        let cases = [
            ("0755", Int(0o755)),
            ("0400", Int(0o400)),
            ("-0755", Int(-0o755)),
            ("0o755", Int(0o755)),
            ("0x1F", Int(31)),
            ("0X1f", Int(31)),
            ("0b101", Int(5)),
            ("-0b101", Int(-5)),
            ("0b-101", Int(-5)),
            ("1_000", Int(1000)),
            ("1__000_", Int(1000)),
            ("+12", Int(12)),
            ("0", Int(0)),
            ("08", Float(8.0)),
            ("1e3", Float(1000.0)),
            ("1E3", Float(1000.0)),
            (".5", Float(0.5)),
            ("+.5", Float(0.5)),
            ("1.", Float(1.0)),
            ("-.inf", Float(f64::NEG_INFINITY)),
            ("12345678901234567890", Uint(12_345_678_901_234_567_890)),
            (
                "123456789012345678901234567890",
                Float(1.234_567_890_123_456_8e29),
            ),
            ("yes", Bool(true)),
            ("Yes", Bool(true)),
            ("ON", Bool(true)),
            ("y", Bool(true)),
            ("n", Bool(false)),
            ("off", Bool(false)),
            ("~", Null),
            ("null", Null),
            ("", Null),
            ("yEs", Str("yEs".into())),
            ("nULL", Str("nULL".into())),
            ("1e400", Str("1e400".into())),
            ("0x", Str("0x".into())),
            ("0x1FFFFFFFFFFFFFFFF", Str("0x1FFFFFFFFFFFFFFFF".into())),
            ("1:20", Str("1:20".into())),
            ("2001-12-14", Str("2001-12-14".into())),
            ("_1", Str("_1".into())),
            ("<<", Str("<<".into())),
            ("inf", Str("inf".into())),
        ];
        for (text, want) in cases {
            let got = resolve_plain(text);
            match (&got, &want) {
                (Float(a), Float(b)) if a.is_nan() && b.is_nan() => {}
                _ => assert_eq!(got, want, "{text:?}"),
            }
        }
        assert!(matches!(resolve_plain(".nan"), Float(f) if f.is_nan()));
    }

    #[test]
    fn tags_decide_as_goyaml_v2_decides() {
        let doc = |y: &str| read(y).expect("reads").remove(0);
        assert_eq!(doc("a: !!str 0755"), json!({"a": "0755"}));
        assert_eq!(doc("a: !!int \"0755\""), json!({"a": 493}));
        assert_eq!(doc("a: !!float 1"), json!({"a": 1}));
        assert_eq!(doc("a: ! 0755"), json!({"a": "0755"}));
        assert_eq!(doc("a: !custom 0755"), json!({"a": "0755"}));
        assert_eq!(doc("a: !!binary aGVsbG8="), json!({"a": "hello"}));
        assert_eq!(doc("a: !!timestamp 2001-12-14"), json!({"a": "2001-12-14"}));
        assert!(read("a: !!int 1.5").is_err());
        assert!(read("a: !!timestamp yes").is_err());
        assert!(read("a: !!binary '%%%'").is_err());
    }

    #[test]
    fn keys_become_strings_as_sigs_yaml_makes_them() {
        let doc = read("0755: a\nyes: b\n1e3: c\n3.14159265358979: d\n1.5e10: e\n0.0001: f\n-1e-5: g\n2001-12-14: h\n")
            .expect("reads")
            .remove(0);
        assert_eq!(
            doc,
            json!({"493": "a", "true": "b", "1000": "c", "3.1415927": "d", "1.5e+10": "e", "0.0001": "f", "-1e-05": "g", "2001-12-14": "h"})
        );
        for refused in [
            "~: a",
            "null: a",
            "12345678901234567890: a",
            "a: .inf",
            "a: [.nan]",
        ] {
            assert!(read(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn floats_become_json_numbers_as_go_prints_them() {
        assert_eq!(json_number(1000.0), Some(Number::from(1000)));
        assert_eq!(json_number(0.5).and_then(|n| n.as_f64()), Some(0.5));
        assert_eq!(json_number(1e21).map(|n| n.is_f64()), Some(true));
        assert_eq!(json_number(2e19).map(|n| n.is_f64()), Some(true));
        assert_eq!(
            json_number(1e19),
            Some(Number::from(10_000_000_000_000_000_000u64))
        );
        assert_eq!(json_number(f64::INFINITY), None);
    }

    #[test]
    fn merge_keys_follow_goyaml_v2_order() {
        let doc = read("base: &b {a: 1, b: 2}\nx:\n  a: 0\n  <<: *b\n  b: 3\nz:\n  <<: [{a: 1}, {a: 2, c: 3}]\n")
            .expect("reads")
            .remove(0);
        // goyaml v2 merges in place: a key before `<<` is replaced by the merged one.
        assert_eq!(doc["x"], json!({"a": 1, "b": 3}));
        assert_eq!(doc["z"], json!({"a": 1, "c": 3}));
        assert!(read("a:\n  <<: 1\n").is_err());
        assert_eq!(
            read("a: {'<<': 1}").expect("reads")[0],
            json!({"a": {"<<": 1}})
        );
    }

    #[test]
    fn keys_equal_after_conversion_are_refused() {
        let e = read("yes: a\ntrue: b\n").expect_err("refused");
        assert_eq!((e.document, e.line), (1, 2));
        assert!(e.message.contains("\"true\""), "{}", e.message);
    }

    #[test]
    fn strings_yaml_1_1_reads_otherwise_are_quoted() {
        for s in [
            "yes",
            "on",
            "N",
            "0755",
            "1e3",
            "~",
            "null",
            "",
            "0x1F",
            "1_000",
            "<<",
            ".5",
            "+12",
            "08",
            "-.inf",
            "a\u{2028}b",
        ] {
            let out = write(&[json!({ "v": s })]).expect("writes");
            assert!(
                out.contains("\"v\": \"") || out.contains("v: \""),
                "{s:?}: {out}"
            );
            assert_eq!(
                read(&out).expect("reads back")[0],
                json!({ "v": s }),
                "{out}"
            );
        }
        assert_eq!(write(&[json!({"v": "yEs2"})]).expect("writes"), "v: yEs2\n");
    }
}
