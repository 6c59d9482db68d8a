//! Properties of `mime_split` over generated messages: the parts taken out are exactly the
//! large attachments (name, type, bytes, inline flag, Content-ID), what remains is the original
//! minus the reported ranges, still parses, and holds every text body and small attachment;
//! with nothing large, the message comes back untouched.

#![allow(clippy::unwrap_used)]

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mail_parser::MessageParser;
use proptest::prelude::*;
use smtp2oauth_upstream::mime_split::{LargePart, split_large_parts};

const THRESHOLD: usize = 64;

#[derive(Clone, Debug)]
enum Enc {
    Base64,
    Qp,
    /// 7bit or binary: the bytes as they are (CRLF line ends only, as the spool stores them).
    Raw(&'static str),
}

#[derive(Clone, Debug)]
enum NameStyle {
    Plain,
    Rfc2047,
    Rfc2231,
    InContentType,
    Absent,
}

#[derive(Clone, Debug)]
enum Disp {
    Attachment,
    Inline,
    Absent,
}

#[derive(Clone, Debug)]
struct Att {
    ctype: &'static str,
    bytes: Vec<u8>,
    enc: Enc,
    name: NameStyle,
    disp: Disp,
    cid: Option<String>,
    n: usize,
}

impl Att {
    fn decoded_name(&self) -> Option<String> {
        match self.name {
            // A `filename` parameter needs a Content-Disposition field to be in.
            NameStyle::Plain | NameStyle::Rfc2047 | NameStyle::Rfc2231
                if matches!(self.disp, Disp::Absent) =>
            {
                None
            }
            NameStyle::Absent => None,
            NameStyle::Plain | NameStyle::InContentType => Some(format!("scan_{}.dat", self.n)),
            NameStyle::Rfc2047 | NameStyle::Rfc2231 => Some(format!("été {}.dat", self.n)),
        }
    }

    fn is_attachment(&self) -> bool {
        matches!(self.disp, Disp::Attachment)
            || self.decoded_name().is_some()
            || !self.ctype.starts_with("text/")
    }

    fn is_large(&self) -> bool {
        self.is_attachment() && self.bytes.len() > THRESHOLD
    }

    fn expected(&self) -> LargePart {
        let ext = match self.ctype {
            "application/pdf" => ".pdf",
            "image/png" => ".png",
            "text/plain" => ".txt",
            _ => ".bin",
        };
        LargePart {
            name: self
                .decoded_name()
                .unwrap_or_else(|| format!("attachment{ext}")),
            content_type: self.ctype.to_string(),
            bytes: self.bytes.clone(),
            inline: match self.disp {
                Disp::Inline => true,
                Disp::Attachment => false,
                Disp::Absent => self.cid.is_some(),
            },
            content_id: self.cid.clone(),
        }
    }

    fn entity(&self) -> Vec<u8> {
        let name = self.decoded_name().unwrap_or_default();
        let mut ct = format!("Content-Type: {}", self.ctype);
        if matches!(self.name, NameStyle::InContentType) {
            ct.push_str(&format!("; name=\"{name}\""));
        }
        let param = match self.name {
            NameStyle::Plain => format!("; filename=\"{name}\""),
            NameStyle::Rfc2047 => format!(
                ";\r\n filename=\"=?UTF-8?B?{}?=\"",
                STANDARD.encode(name.as_bytes())
            ),
            NameStyle::Rfc2231 => format!(";\r\n filename*=utf-8''{}", pct(&name)),
            _ => String::new(),
        };
        let mut h = format!("{ct}\r\n");
        match self.disp {
            Disp::Attachment => h.push_str(&format!("Content-Disposition: attachment{param}\r\n")),
            Disp::Inline => h.push_str(&format!("Content-Disposition: inline{param}\r\n")),
            Disp::Absent => {}
        }
        if let Some(cid) = &self.cid {
            h.push_str(&format!("Content-ID: <{cid}>\r\n"));
        }
        let body = match self.enc {
            Enc::Base64 => {
                h.push_str("Content-Transfer-Encoding: base64\r\n");
                lines(STANDARD.encode(&self.bytes).as_bytes(), 76)
            }
            Enc::Qp => {
                h.push_str("Content-Transfer-Encoding: quoted-printable\r\n");
                qp(&self.bytes)
            }
            Enc::Raw(cte) => {
                h.push_str(&format!("Content-Transfer-Encoding: {cte}\r\n"));
                self.bytes.clone()
            }
        };
        [h.into_bytes(), b"\r\n".to_vec(), body].concat()
    }
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == b'.' {
                (c as char).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect()
}

fn lines(b: &[u8], width: usize) -> Vec<u8> {
    b.chunks(width).collect::<Vec<_>>().join(&b"\r\n"[..])
}

/// Every byte but printable ASCII as `=XX`, soft breaks every 72 characters.
fn qp(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut col = 0;
    for &c in bytes {
        let enc = if c.is_ascii_graphic() && c != b'=' {
            vec![c]
        } else {
            format!("={c:02X}").into_bytes()
        };
        if col + enc.len() > 72 {
            out.extend_from_slice(b"=\r\n");
            col = 0;
        }
        col += enc.len();
        out.extend(enc);
    }
    out
}

#[derive(Clone, Debug)]
enum Shape {
    /// The whole message is one part.
    Single(Att),
    Mixed {
        preamble: bool,
        epilogue: bool,
        text: Option<String>,
        /// HTML with inline images in a multipart/related.
        related: Option<(String, Vec<Att>)>,
        attachments: Vec<Att>,
    },
}

const HEAD: &str =
    "From: scanner@contoso.example\r\nTo: a@example.com\r\nSubject: Scan\r\nMIME-Version: 1.0\r\n";

/// Delimiter, then the child, for each child of a multipart body.
fn multipart(boundary: &str, preamble: bool, epilogue: bool, children: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    if preamble {
        out.extend_from_slice(b"This is a multi-part message in MIME format.");
    }
    for (i, c) in children.iter().enumerate() {
        if i > 0 || preamble {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        out.extend_from_slice(c);
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    if epilogue {
        out.extend_from_slice(b"epilogue\r\n");
    }
    out
}

impl Shape {
    fn attachments(&self) -> Vec<&Att> {
        match self {
            Shape::Single(a) => vec![a],
            Shape::Mixed {
                related,
                attachments,
                ..
            } => related
                .iter()
                .flat_map(|(_, imgs)| imgs.iter())
                .chain(attachments.iter())
                .collect(),
        }
    }

    fn message(&self) -> Vec<u8> {
        match self {
            Shape::Single(a) => [HEAD.as_bytes(), &a.entity()].concat(),
            Shape::Mixed {
                preamble,
                epilogue,
                text,
                related,
                attachments,
            } => {
                let mut children = Vec::new();
                if let Some(t) = text {
                    children.push(
                        format!("Content-Type: text/plain; charset=us-ascii\r\n\r\n{t}")
                            .into_bytes(),
                    );
                }
                if let Some((html, imgs)) = related {
                    let mut inner =
                        vec![format!("Content-Type: text/html\r\n\r\n{html}").into_bytes()];
                    inner.extend(imgs.iter().map(Att::entity));
                    let body = multipart("=_rel_7f3a", false, false, &inner);
                    children.push([&b"Content-Type: multipart/related; boundary=\"=_rel_7f3a\"\r\n\r\n"[..], &body].concat());
                }
                children.extend(attachments.iter().map(Att::entity));
                let body = multipart("=_mix_91c2", *preamble, *epilogue, &children);
                [
                    HEAD.as_bytes(),
                    b"Content-Type: multipart/mixed; boundary=\"=_mix_91c2\"\r\n\r\n",
                    &body,
                ]
                .concat()
            }
        }
    }
}

fn att_strategy(ctypes: &'static [&'static str]) -> impl Strategy<Value = Att> {
    let size = prop_oneof![
        0usize..THRESHOLD,
        THRESHOLD + 1..4 * THRESHOLD,
        Just(THRESHOLD)
    ];
    (
        prop::sample::select(ctypes),
        size,
        any::<u64>(),
        0..4usize,
        0..5usize,
        0..3usize,
        any::<bool>(),
        0..1000usize,
    )
        .prop_map(|(ctype, len, seed, enc, name, disp, cid, n)| {
            let enc = [Enc::Base64, Enc::Qp, Enc::Raw("7bit"), Enc::Raw("binary")][enc].clone();
            let bytes = content(
                len,
                seed,
                matches!(enc, Enc::Raw("7bit")) || ctype.starts_with("text/"),
            );
            Att {
                ctype,
                bytes,
                enc,
                name: [
                    NameStyle::Plain,
                    NameStyle::Rfc2047,
                    NameStyle::Rfc2231,
                    NameStyle::InContentType,
                    NameStyle::Absent,
                ][name]
                    .clone(),
                disp: [Disp::Attachment, Disp::Inline, Disp::Absent][disp].clone(),
                cid: cid.then(|| format!("part{n}@scan")),
                n,
            }
        })
}

/// `len` bytes from `seed`: printable ASCII lines for text, anything but a lone CR or LF
/// otherwise (stored messages have CRLF line ends only).
fn content(len: usize, seed: u64, ascii: bool) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = (x >> 24) as u8;
        if out.len() + 2 <= len && b.is_multiple_of(29) {
            out.extend_from_slice(b"\r\n");
        } else if ascii {
            out.push(b' ' + b % 95);
        } else if b != b'\r' && b != b'\n' {
            out.push(b);
        }
    }
    out
}

fn shape_strategy() -> impl Strategy<Value = Shape> {
    const ANY: &[&str] = &[
        "application/pdf",
        "image/png",
        "application/octet-stream",
        "text/plain",
    ];
    const IMAGES: &[&str] = &["image/png"];
    prop_oneof![
        1 => att_strategy(ANY).prop_map(Shape::Single),
        4 => (
            any::<bool>(),
            any::<bool>(),
            prop::option::of("[a-zA-Z0-9 .,]{0,60}"),
            prop::option::of(("<p>[a-z ]{0,40}</p>", prop::collection::vec(att_strategy(IMAGES), 0..3))),
            prop::collection::vec(att_strategy(ANY), 0..4),
        )
            .prop_filter("a multipart has at least one part", |(_, _, t, r, a)| {
                t.is_some() || r.is_some() || !a.is_empty()
            })
            .prop_map(|(preamble, epilogue, text, related, attachments)| Shape::Mixed {
                preamble,
                epilogue,
                text,
                related,
                attachments,
            }),
    ]
}

/// The decoded contents of every leaf part mail-parser finds (empty ones aside), sorted: the
/// message's content as a multiset, however a reader classifies its parts.
fn leaves(message: &[u8]) -> Vec<Vec<u8>> {
    let parsed = MessageParser::new().parse(message).unwrap();
    let mut out: Vec<Vec<u8>> = parsed
        .parts
        .iter()
        .filter(|p| !matches!(p.body, mail_parser::PartType::Multipart(_)))
        .map(|p| p.contents().to_vec())
        .filter(|b| !b.is_empty())
        .collect();
    out.sort();
    out
}

fn check(shape: &Shape) -> Result<(), TestCaseError> {
    let original = shape.message();
    let split = split_large_parts(&original, THRESHOLD);
    let atts = shape.attachments();
    let expected: Vec<LargePart> = atts
        .iter()
        .filter(|a| a.is_large())
        .map(|a| a.expected())
        .collect();
    prop_assert_eq!(&split.parts, &expected);

    // What remains is the original without the reported ranges, nothing else.
    let mut rebuilt = Vec::new();
    let mut at = 0;
    for r in &split.removed {
        prop_assert!(
            r.start >= at && r.end > r.start,
            "ranges sorted and disjoint"
        );
        rebuilt.extend_from_slice(&original[at..r.start]);
        at = r.end;
    }
    rebuilt.extend_from_slice(&original[at..]);
    prop_assert_eq!(&rebuilt[..], &split.remaining[..]);
    if expected.is_empty() {
        prop_assert!(matches!(split.remaining, Cow::Borrowed(_)));
        prop_assert_eq!(&split.remaining[..], &original[..]);
        return Ok(());
    }

    // Every header but the Content-* ones stays, in order.
    prop_assert!(split.remaining.starts_with(HEAD.as_bytes()));
    // The text and HTML bodies and the small attachments are all still there.
    let parsed = MessageParser::new()
        .parse(split.remaining.as_ref())
        .unwrap();
    if let Shape::Mixed { text: Some(t), .. } = shape
        && !t.is_empty()
    {
        let body = parsed.body_text(0);
        prop_assert_eq!(body.as_deref(), Some(t.as_str()));
    }
    if let Shape::Mixed {
        related: Some((html, _)),
        ..
    } = shape
    {
        let found = parsed
            .html_bodies()
            .any(|p| p.contents() == html.as_bytes());
        prop_assert!(found, "html body kept");
    }
    // Nothing is lost or changed: the remaining leaves plus the parts taken out are the
    // original's leaves, decoded by mail-parser on one side and by us on the other.
    let mut union = leaves(&split.remaining);
    union.extend(split.parts.iter().map(|p| p.bytes.clone()));
    union.sort();
    prop_assert_eq!(leaves(&original), union);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn large_parts_come_out_and_everything_else_stays(shape in shape_strategy()) {
        check(&shape)?;
    }

    #[test]
    fn nothing_large_means_nothing_changes(shape in shape_strategy()) {
        let original = shape.message();
        let split = split_large_parts(&original, usize::MAX);
        prop_assert!(split.parts.is_empty() && split.removed.is_empty());
        prop_assert!(matches!(split.remaining, Cow::Borrowed(_)));
        prop_assert_eq!(&split.remaining[..], &original[..]);
    }
}
