//! What the relay leaves on disk is its user's alone: queued mail, captured mail, the master
//! key, stored sign-ins, the generated TLS key and the state file are created private (0700
//! directories, 0600 files) whatever the umask it was started with; and the warning about a
//! store every user can read is given only for a directory the relay did not create.

use crate::harness::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A relay with a capture account, a delegated account nobody signed in (so the token store
/// and the master key exist, and its mail stays queued), a TLS listener with a generated
/// certificate, and a device for each account.
fn config(store: &Path) -> String {
    format!(
        r#"
[server]
hostname = "relay.test"

[delivery]
wait_for_upstream = "0s"

[[listeners]]
name = "plain"
address = "127.0.0.1:0"
tls = "none"
allow_insecure_auth = true

[[listeners]]
name = "implicit"
address = "127.0.0.1:0"
tls = "implicit"

[store]
dir = "{store}"

[[accounts]]
name = "scanner"
mailbox = "{MAILBOX}"
route = "capture"

[[accounts]]
name = "nas"
mailbox = "nas@contoso.com"
route = "smtp"
provider = "generic"
flow = "device_code"
client_id = "relay"
token_url = "https://127.0.0.1:9/token"
device_code_url = "https://127.0.0.1:9/devicecode"
smtp_host = "127.0.0.1"

[[devices]]
name = "ups"
auth = false
allow_ips = ["127.0.0.1/32"]
account = "scanner"

[[devices]]
username = "{DEVICE_USER}"
password_hash = "{hash}"
account = "nas"
"#,
        store = store.display(),
        hash = password_hash(DEVICE_PASSWORD),
    )
}

/// Every path under `dir` (itself included) whose mode lets its group or others in.
fn not_private(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut open = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            open.push((p.clone(), mode));
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
        }
    }
    open
}

#[tokio::test(flavor = "multi_thread")]
async fn everything_the_relay_creates_is_private_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("var/lib/smtp2oauth");
    let wrapper = ["sh".to_string(), "-c".into(), "umask 000 &&".into()];
    let mut relay = Relay::start_cmd(&config(&store), &[], &wrapper);
    let port = relay.port("plain").to_string();
    let r = smtplib(&[
        "--port",
        &port,
        "--from",
        MAILBOX,
        "--to",
        "you@example.com",
    ])
    .await;
    assert_eq!(r[0]["code"], 250, "{r:?}");
    let captured = store.join("capture");
    let mut eml = false;
    for _ in 0..100 {
        eml = std::fs::read_dir(&captured).is_ok_and(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.path().extension().is_some_and(|x| x == "json"))
        });
        if eml && store.join("state.json").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(eml, "nothing captured: {}", relay.logs());
    // A message that stays queued (its account waits for a sign-in) keeps files in the spool.
    let r = send_as_device(&relay, "nas@contoso.com", &[]).await;
    assert_eq!(r[0]["code"], 250, "{r:?}");
    assert_eq!(spool_ids(&store, "queue").len(), 1, "{}", relay.logs());
    for made in [
        "spool/queue",
        "spool/data",
        "spool/control",
        "tls/self-signed-key.pem",
        "tls/self-signed-cert.pem",
        "master.key",
        "tokens",
        "state.json",
    ] {
        assert!(store.join(made).exists(), "{made} was not created");
    }
    assert!(relay.terminate().success());
    let open = not_private(&store);
    assert!(open.is_empty(), "readable by others: {open:?}");
    // The parents the relay created for the store are its own too.
    assert_eq!(not_private(&dir.path().join("var")), Vec::new());
    let store_text = store.display().to_string();
    let logs = relay.logs();
    assert!(
        !logs
            .lines()
            .any(|l| l.contains("readable by every user") && l.contains(&store_text)),
        "a warning about what the relay made itself:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_made_by_someone_else_and_readable_by_all_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut relay = Relay::start(&config(&store));
    assert!(
        relay.wait_log("readable by every user", Duration::from_secs(10)),
        "{}",
        relay.logs()
    );
    assert!(relay.logs().contains(&store.display().to_string()));
    assert!(relay.terminate().success());
}
