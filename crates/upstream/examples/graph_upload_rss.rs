//! Time and peak memory of one large message through `graph_upload`, against the fake Graph
//! running in another process (so the fake's own copies of the message are not counted).
//!
//! ```text
//! cargo build --release -p smtp2oauth-upstream --example graph_upload_rss
//! X=target/release/examples/graph_upload_rss
//! $X serve > /tmp/fake.env &                 # KEY=VALUE lines; runs until killed
//! $X make /tmp/scan35.eml 35000000          # a scan: text, an inline logo, one large PDF
//! /usr/bin/time -v $X send /tmp/fake.env /tmp/scan35.eml
//! ```
//!
//! `send` reads the message whole, as the Graph route reads a spooled message, then times
//! `GraphUpload::send` alone and prints it; `/usr/bin/time -v` gives the process's peak RSS.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use smtp2oauth_testkit::{FakeGraph, FakeIdp, IdpConfig, TestPki};
use smtp2oauth_tokens::{
    CacheOptions, ClientCredential, ClientCredentialsGrant, HttpOptions, Secret, TokenCache,
    TokenSource, http_client,
};
use smtp2oauth_upstream::graph_upload::GraphUpload;

const MAILBOX: &str = "scanner@contoso.example";

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => serve().await,
        Some("make") if args.len() == 4 => make(&args[2], args[3].parse().expect("a size")),
        Some("send") if args.len() == 4 => send(&args[2], &args[3]).await,
        _ => {
            eprintln!("usage: graph_upload_rss serve | make <path> <bytes> | send <env> <path>");
            std::process::exit(2);
        }
    }
}

/// The fake IdP and Graph; prints how to reach them, then reports each delivery on stderr.
async fn serve() {
    let pki = TestPki::new();
    let idp = FakeIdp::start(IdpConfig::default()).await;
    let graph = FakeGraph::start(pki.server_config(), MAILBOX, idp.scope_validator()).await;
    println!("GRAPH_URL={}", graph.url());
    println!("TOKEN_URL={}", idp.token_url());
    println!("CLIENT_ID={}", idp.client_id());
    println!("CA={}", pki.ca_pem_path().display());
    let mut seen = 0;
    loop {
        let messages = graph
            .wait_for_messages(seen + 1, Duration::from_secs(3600))
            .await;
        for m in &messages[seen..] {
            let sizes: Vec<usize> = m.attachments.iter().map(|a| a.bytes.len()).collect();
            eprintln!(
                "delivered: {} bytes of MIME, attachments {sizes:?}, drafts left {}",
                m.mime.len(),
                graph.drafts().len()
            );
        }
        seen = messages.len();
    }
}

/// A scan of about `size` bytes: a text and an HTML body, a 200 kB inline logo, one PDF.
fn make(path: &str, size: usize) {
    let b64 = |n: usize, seed: u64| {
        let mut x = seed | 1;
        let bytes: Vec<u8> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let enc = base64::engine::general_purpose::STANDARD.encode(bytes);
        enc.as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\r\n")
    };
    let pdf = (size.saturating_sub(280_000)) * 57 / 78;
    let m = format!(
        "From: scanner@contoso.example\r\nTo: alice@example.com\r\nSubject: Scan\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"=_m\"\r\n\r\n\
         --=_m\r\nContent-Type: multipart/related; boundary=\"=_r\"\r\n\r\n\
         --=_r\r\nContent-Type: text/html\r\n\r\n<p>Scan</p><img src=\"cid:logo@mfp\">\r\n\
         --=_r\r\nContent-Type: image/png\r\nContent-ID: <logo@mfp>\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--=_r--\r\n\
         --=_m\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"scan.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--=_m--\r\n",
        b64(200_000, 1),
        b64(pdf, 2)
    );
    std::fs::write(path, m).expect("write the message");
}

async fn send(env_path: &str, message_path: &str) {
    let env: HashMap<String, String> = std::fs::read_to_string(env_path)
        .expect("read the env file")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let tokens: Arc<dyn TokenSource> = Arc::new(TokenCache::new(
        "graph",
        ClientCredentialsGrant {
            token_url: env["TOKEN_URL"].clone(),
            client_id: env["CLIENT_ID"].clone(),
            credential: ClientCredential::Secret(Secret::new(
                IdpConfig::default().client_secret.expect("a secret"),
            )),
            scope: "https://graph.microsoft.com/.default".into(),
        },
        http_client(&HttpOptions::default()).expect("client"),
        CacheOptions::default(),
    ));
    let http = http_client(&HttpOptions {
        ca_file: Some(env["CA"].clone().into()),
        ..HttpOptions::default()
    })
    .expect("client");
    tokens.token().await.expect("a token");
    let started = Instant::now();
    let mime = tokio::fs::read(message_path)
        .await
        .expect("read the message");
    let url = env["GRAPH_URL"].clone();
    let sent = GraphUpload::new(&http, &url, MAILBOX, tokens.as_ref())
        .send(&mime)
        .await;
    let elapsed = started.elapsed();
    match sent {
        Ok(d) => println!(
            "sent {} bytes in {:.3} s: {} requests, {} posted, {} uploaded",
            mime.len(),
            elapsed.as_secs_f64(),
            d.requests,
            d.posted,
            d.uploaded
        ),
        Err(e) => {
            eprintln!("failed after {:.3} s: {e}", elapsed.as_secs_f64());
            std::process::exit(1);
        }
    }
}
