//! A fake DNS server on 127.0.0.1 (UDP) answering MX and A queries from a table.
//!
//! Why: the smart-host route resolves a domain's MX hosts and their addresses. Tests point the
//! relay's `dns_servers` at this server so MX preference order and fallback between hosts can
//! be exercised against hosts that all live on 127.0.0.1, without touching the machine's real
//! resolver. It answers authoritatively: names it does not know get NXDOMAIN, known names
//! without records of the asked type get an empty NOERROR answer (as a real server would).
//! Queries are counted so a test can see that lookups really went through it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use crate::lock;

#[derive(Default)]
struct Zone {
    /// name (lower case, no trailing dot) → (preference, exchange)
    mx: HashMap<String, Vec<(u16, String)>>,
    a: HashMap<String, Vec<Ipv4Addr>>,
    queries: Vec<(String, u16)>,
}

/// Handle to a running fake DNS server; stops when the last clone drops.
#[derive(Clone)]
pub struct FakeDns {
    zone: Arc<Mutex<Zone>>,
    addr: SocketAddr,
    _task: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

const TYPE_A: u16 = 1;
const TYPE_MX: u16 = 15;

impl FakeDns {
    pub async fn start() -> FakeDns {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for FakeDns");
        let addr = sock.local_addr().expect("local addr");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let z = zone.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            loop {
                let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                if let Some(answer) = respond(&z, &buf[..n]) {
                    let _ = sock.send_to(&answer, peer).await;
                }
            }
        });
        FakeDns {
            zone,
            addr,
            _task: Arc::new(AbortOnDrop(task)),
        }
    }

    /// `127.0.0.1:PORT`, for the relay's `dns_servers`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn add_mx(&self, domain: &str, preference: u16, exchange: &str) {
        lock(&self.zone)
            .mx
            .entry(norm(domain))
            .or_default()
            .push((preference, norm(exchange)));
    }
    pub fn add_a(&self, name: &str, ip: Ipv4Addr) {
        lock(&self.zone).a.entry(norm(name)).or_default().push(ip);
    }
    /// (name, type) of every query received; type 15 is MX, 1 is A, 28 is AAAA.
    pub fn queries(&self) -> Vec<(String, u16)> {
        lock(&self.zone).queries.clone()
    }
}

fn norm(n: &str) -> String {
    n.trim_end_matches('.').to_ascii_lowercase()
}

fn encode_name(name: &str, out: &mut Vec<u8>) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// Builds the answer to one query, or None for something that is not a query we can parse.
fn respond(zone: &Mutex<Zone>, q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 12 || q[2] & 0x80 != 0 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    // The question's name.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question_end = i + 4;
    if q.len() < question_end {
        return None;
    }
    let name = labels.join(".");
    let mut z = lock(zone);
    z.queries.push((name.clone(), qtype));
    let known = z.mx.contains_key(&name) || z.a.contains_key(&name);
    let mut answers: Vec<Vec<u8>> = Vec::new();
    match qtype {
        TYPE_MX => {
            for (pref, exchange) in z.mx.get(&name).into_iter().flatten() {
                let mut rdata = pref.to_be_bytes().to_vec();
                encode_name(exchange, &mut rdata);
                answers.push(rdata);
            }
        }
        TYPE_A => {
            for ip in z.a.get(&name).into_iter().flatten() {
                answers.push(ip.octets().to_vec());
            }
        }
        _ => {}
    }
    drop(z);
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&q[0..2]); // id
    // QR, opcode 0, AA, RD copied; RA; rcode NOERROR or NXDOMAIN.
    out.push(0x84 | (q[2] & 0x01));
    out.push(0x80 | if known { 0 } else { 3 });
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&q[12..question_end]);
    for rdata in answers {
        out.extend_from_slice(&[0xc0, 12]); // pointer to the question's name
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes()); // IN
        out.extend_from_slice(&60u32.to_be_bytes());
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(&rdata);
    }
    Some(out)
}
