//! The token store: one encrypted file per account under `<store dir>/tokens/`, holding the
//! refresh token a person's sign-in produced and what the admin needs to know about it.
//!
//! Why this shape:
//! - A refresh token is a password to a mailbox for months, so it is only ever on disk sealed
//!   with an AEAD (ChaCha20-Poly1305 from `ring`, which the TLS stack already brings in) under a
//!   32-byte master key that can live apart from the data (a Docker secret, another volume).
//! - One small file per account keeps the failure modes obvious: a file is either the last one
//!   written whole (write to a temporary file, fsync, rename, fsync the directory) or the one
//!   before; two processes (the relay refreshing, `smtp2oauth account login` signing in) never
//!   interleave, because every read-modify-write holds an `flock` on the account's lock file.
//! - Every one of those steps blocks (a read, an fsync, waiting for the lock), so the store
//!   has one face, async, and does its file work on tokio's blocking pool: no caller can stall
//!   the runtime by forgetting to offload it. The blocking work itself is [`Files`].
//! - A file names the key it was sealed with (a fingerprint, not the key), and the header and
//!   the account name are authenticated along with the contents. So "wrong master key",
//!   "this file was modified or swapped" and "this is not a token file" are three different,
//!   plain errors; none of them ever leads to the file being replaced with an empty state.
//!
//! File format (text, so `head` shows what it is):
//! ```text
//! smtp2oauth-token v1 chacha20-poly1305 key=<16 hex: key id>
//! <base64: 12-byte nonce || ciphertext || 16-byte tag>
//! ```
//! The associated data is the first line, a newline, and the account name. The plaintext is
//! JSON ([`StoredToken`]). Nonces are random: a file is rewritten a few dozen times a day at
//! most, far below the 2^32 messages per key for which random 96-bit nonces are safe.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// The first word of every token file.
const MAGIC: &str = "smtp2oauth-token v1 chacha20-poly1305";
/// Name of the generated master key file inside the store directory.
pub const MASTER_KEY_FILE: &str = "master.key";
/// Token files are a few hundred bytes; anything much larger is not one.
const MAX_FILE: u64 = 256 * 1024;

/// What went wrong with the token store or the master key. Every message names the file or the
/// source, says what it means and what to do, and never contains key material or tokens.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The master key is not 64 hex characters.
    #[error(
        "the master key from {origin} is not valid: {detail}; it must be 64 hexadecimal \
         characters (32 bytes), as printed by `smtp2oauth keygen` or `openssl rand -hex 32`"
    )]
    BadKey {
        /// Where the key came from (the variable or the file).
        origin: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The master key file could not be read.
    #[error("cannot read the master key file {path}: {error}")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// Why it could not be read.
        error: io::Error,
    },
    /// Token files exist but no master key was given.
    #[error(
        "{path} holds encrypted sign-ins but there is no master key: set SMTP2OAUTH_MASTER_KEY \
         or [store] master_key_file to the key they were written with (a new key would not open \
         them; to start over, move {path} away and sign in again)"
    )]
    MissingKey {
        /// The token directory.
        path: PathBuf,
    },
    /// The file was sealed with another master key.
    #[error(
        "{path} was written with a different master key (key id {file_key}; the key in use has \
         key id {key}): set SMTP2OAUTH_MASTER_KEY or [store] master_key_file to the key it was \
         written with"
    )]
    WrongKey {
        /// The token file.
        path: PathBuf,
        /// The id of the key the file was sealed with.
        file_key: String,
        /// The id of the key in use.
        key: String,
    },
    /// The file fails authentication: modified, damaged, or another account's.
    #[error(
        "{path} was modified or damaged: its contents fail authentication with the master key \
         it names (key id {key}); restore it from a backup, or move it away and sign in again"
    )]
    Tampered {
        /// The token file.
        path: PathBuf,
        /// The id of the key in use.
        key: String,
    },
    /// The file is not a token file at all.
    #[error("{path} is not a smtp2oauth token file: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        error: io::Error,
    },
}

impl StoreError {
    fn io(path: &Path, error: io::Error) -> Self {
        StoreError::Io {
            path: path.to_path_buf(),
            error,
        }
    }
}

/// The 32-byte key that seals token files. `Debug` prints only its key id.
pub struct MasterKey {
    bytes: [u8; 32],
}

impl MasterKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the operating system's random number generator is unavailable");
        MasterKey { bytes }
    }

    /// Parses 64 hex characters (surrounding whitespace, e.g. a file's newline, is ignored).
    /// `origin` names where the text came from, for the error.
    pub fn from_hex(text: &str, origin: &str) -> Result<Self, StoreError> {
        let text = text.trim();
        let bad = |detail: String| StoreError::BadKey {
            origin: origin.to_owned(),
            detail,
        };
        if text.is_empty() {
            return Err(bad("it is empty".into()));
        }
        if text.len() != 64 {
            return Err(bad(format!("it has {} characters", text.len())));
        }
        let mut bytes = [0u8; 32];
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16);
            let lo = (pair[1] as char).to_digit(16);
            match (hi, lo) {
                (Some(hi), Some(lo)) => bytes[i] = (hi * 16 + lo) as u8,
                _ => return Err(bad("it contains a character that is not hexadecimal".into())),
            }
        }
        Ok(MasterKey { bytes })
    }

    /// The key as 64 lower-case hex characters (for `keygen` and the generated key file).
    pub fn to_hex(&self) -> Secret {
        let mut out = String::with_capacity(64);
        for b in self.bytes {
            out.push_str(&format!("{b:02x}"));
        }
        Secret::from(out)
    }

    /// A fingerprint that tells keys apart without revealing them: the first 8 bytes of
    /// SHA-256("smtp2oauth master key id" || 0 || key), as hex.
    pub fn id(&self) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"smtp2oauth master key id\0");
        ctx.update(&self.bytes);
        ctx.finish().as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The AEAD key for token files, derived with HKDF-SHA256 so the master key can later seal
    /// other things under other labels without reusing a key for two purposes.
    fn file_key(&self) -> LessSafeKey {
        struct Len;
        impl ring::hkdf::KeyType for Len {
            fn len(&self) -> usize {
                32
            }
        }
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"smtp2oauth");
        let prk = salt.extract(&self.bytes);
        let mut okm = [0u8; 32];
        prk.expand(&[b"token store v1"], Len)
            .and_then(|o| o.fill(&mut okm))
            .expect("HKDF output of 32 bytes is always valid");
        let key = LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &okm).expect("a 32-byte ChaCha20 key"),
        );
        okm.fill(0);
        key
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey(id {})", self.id())
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.bytes.fill(0);
        std::hint::black_box(&self.bytes);
    }
}

/// Where the master key came from (for the start-up log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    /// `SMTP2OAUTH_MASTER_KEY`.
    Environment,
    /// `[store] master_key_file`, or an existing generated key file.
    File(PathBuf),
    /// Generated now, into this file (first start).
    Generated(PathBuf),
}

impl fmt::Display for KeyOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyOrigin::Environment => f.write_str("SMTP2OAUTH_MASTER_KEY"),
            KeyOrigin::File(p) => write!(f, "{}", p.display()),
            KeyOrigin::Generated(p) => write!(f, "{} (generated now)", p.display()),
        }
    }
}

/// Finds the master key: the environment value if given, else `key_file`, else
/// `<store_dir>/master.key`. Only in the last case, only with `generate`, and only when
/// `<store_dir>/tokens/` holds no token file yet, a missing key is generated (mode 0600); with
/// token files present a missing key is an error, since a new key would silently orphan every
/// sign-in. `Ok(None)`: no key exists and `generate` is false (nothing was ever stored).
pub fn load_master_key(
    env_value: Option<&str>,
    key_file: Option<&Path>,
    store_dir: &Path,
    generate: bool,
) -> Result<Option<(MasterKey, KeyOrigin)>, StoreError> {
    if let Some(value) = env_value {
        return Ok(Some((
            MasterKey::from_hex(value, "SMTP2OAUTH_MASTER_KEY")?,
            KeyOrigin::Environment,
        )));
    }
    if let Some(path) = key_file {
        return Ok(Some((
            read_key_file(path)?,
            KeyOrigin::File(path.to_path_buf()),
        )));
    }
    let path = store_dir.join(MASTER_KEY_FILE);
    match read_key_file(&path) {
        Ok(key) => return Ok(Some((key, KeyOrigin::File(path)))),
        Err(StoreError::KeyFile { error, .. }) if error.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let tokens = store_dir.join("tokens");
    if !token_files(&tokens).is_empty() {
        return Err(StoreError::MissingKey { path: tokens });
    }
    if !generate {
        return Ok(None);
    }
    let key = MasterKey::generate();
    create_dir_private(store_dir)?;
    let tmp = store_dir.join(format!(".{MASTER_KEY_FILE}.{}.tmp", std::process::id()));
    write_private(&tmp, format!("{}\n", key.to_hex().expose()).as_bytes())?;
    // link() fails if the key exists: when two processes start at once, the first key wins and
    // the other process reads it instead of replacing it.
    let linked = fs::hard_link(&tmp, &path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(store_dir)?;
            Ok(Some((key, KeyOrigin::Generated(path))))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Ok(Some((read_key_file(&path)?, KeyOrigin::File(path))))
        }
        Err(e) => Err(StoreError::io(&path, e)),
    }
}

fn read_key_file(path: &Path) -> Result<MasterKey, StoreError> {
    let mut text = String::new();
    File::open(path)
        .and_then(|f| f.take(4096).read_to_string(&mut text))
        .map_err(|error| StoreError::KeyFile {
            path: path.to_path_buf(),
            error,
        })?;
    MasterKey::from_hex(&text, &path.display().to_string())
}

/// Everything kept about one account's sign-in. `Debug` does not print the refresh token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredToken {
    /// The refresh token, when someone is signed in.
    pub refresh_token: Option<Secret>,
    /// The app the token belongs to (a token is useless with another client id).
    pub client_id: String,
    /// `authorization_code` or `device_code`.
    pub flow: String,
    /// Scopes the endpoint granted, when it said.
    pub scope: Option<String>,
    /// When a person last signed in.
    pub signed_in_at: Option<SystemTime>,
    /// When the refresh token was last redeemed successfully.
    pub last_refresh: Option<SystemTime>,
    /// The last failure to redeem it, in words (no secrets).
    pub last_error: Option<String>,
    /// The endpoint refused the refresh token for good: a person must sign in again.
    pub sign_in_required: bool,
    /// Increases with every write; a writer that read generation N only replaces the file if
    /// it still holds N (see [`TokenStore::update`]).
    pub generation: u64,
}

#[derive(Serialize, Deserialize)]
struct Record {
    account: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    client_id: String,
    flow: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signed_in_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_refresh: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    #[serde(default)]
    sign_in_required: bool,
    generation: u64,
}

fn to_unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn from_unix(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

/// A device-code login someone started (shown on the accounts page while it runs). Not secret:
/// the user code is meant to be typed by a person, and without the device code, which never
/// leaves the process polling for it, it gives nobody a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginPrompt {
    /// The code a person enters.
    pub user_code: String,
    /// Where they enter it.
    pub verification_uri: String,
    /// Unix seconds.
    pub expires_at: u64,
    /// Who is waiting for it, e.g. `smtp2oauth account login (pid 1234)`.
    pub started_by: String,
}

/// Identifies one version of a token file cheaply (for noticing writes by another process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// The encrypted token files of one store directory.
///
/// Every method that touches a file is async and runs the file work on tokio's blocking pool.
/// The store also remembers, per account, the record it last read or wrote
/// ([`last_known`](Self::last_known)), so a state can be derived without a read.
pub struct TokenStore {
    files: Arc<Files>,
    known: Mutex<HashMap<String, Option<StoredToken>>>,
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStore")
            .field("dir", &self.files.dir)
            .field("key_id", &self.files.key_id)
            .finish()
    }
}

impl TokenStore {
    /// Opens (creating with mode 0700 if needed) the token directory `dir`.
    pub async fn open(dir: &Path, key: &MasterKey) -> Result<Self, StoreError> {
        let (dir, file_key, key_id) = (dir.to_path_buf(), key.file_key(), key.id());
        let files = blocking(&dir.clone(), move || Files::open(dir, file_key, key_id)).await?;
        Ok(TokenStore {
            files: Arc::new(files),
            known: Mutex::new(HashMap::new()),
        })
    }

    /// The token directory.
    pub fn dir(&self) -> &Path {
        &self.files.dir
    }

    /// The id of the master key in use (never the key).
    pub fn key_id(&self) -> &str {
        &self.files.key_id
    }

    /// The file of `account`.
    pub fn path(&self, account: &str) -> PathBuf {
        self.files.path(account)
    }

    /// Runs `work` on the files, off the runtime.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Files) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let files = self.files.clone();
        blocking(&self.files.dir, move || work(&files)).await
    }

    fn remember(&self, account: &str, record: Option<StoredToken>) {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(account.to_owned(), record);
    }

    /// The record this process last read or wrote for `account`: `None` when it has not
    /// looked yet, `Some(None)` when there was no file. Never touches the disk.
    pub fn last_known(&self, account: &str) -> Option<Option<StoredToken>> {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(account)
            .cloned()
    }

    /// Accounts that have a token file.
    pub async fn accounts(&self) -> Vec<String> {
        self.run(|files| Ok(token_files(&files.dir)))
            .await
            .unwrap_or_default()
    }

    /// Reads and opens `account`'s file; `None` if there is none.
    pub async fn load(&self, account: &str) -> Result<Option<StoredToken>, StoreError> {
        let name = account.to_owned();
        let record = self.run(move |files| files.load(&name)).await?;
        self.remember(account, record.clone());
        Ok(record)
    }

    /// Read-modify-write of `account`'s file under an exclusive lock shared with every other
    /// process using this store. `change` gets the current contents (or `None`) and returns
    /// what to write (`None`: leave the file alone). The written record's generation is one
    /// more than the current one. Returns what the file holds afterwards.
    pub async fn update<F>(
        &self,
        account: &str,
        change: F,
    ) -> Result<Option<StoredToken>, StoreError>
    where
        F: FnOnce(Option<&StoredToken>) -> Option<StoredToken> + Send + 'static,
    {
        let name = account.to_owned();
        let record = self.run(move |files| files.update(&name, change)).await?;
        self.remember(account, record.clone());
        Ok(record)
    }

    /// Identifies the current version of `account`'s file without reading it.
    pub async fn stamp(&self, account: &str) -> Option<FileStamp> {
        let name = account.to_owned();
        self.run(move |files| Ok(files.stamp(&name)))
            .await
            .ok()
            .flatten()
    }

    /// Signs an account out: its token file and any pending device-code prompt are deleted (the
    /// accounts page's Sign out and `account logout`). True when there was a sign-in.
    pub async fn sign_out(&self, account: &str) -> Result<bool, StoreError> {
        let name = account.to_owned();
        let removed = self
            .run(move |files| {
                let removed = files.remove(&name)?;
                files.set_login_prompt(&name, None)?;
                Ok(removed)
            })
            .await?;
        self.remember(account, None);
        Ok(removed)
    }

    /// Records (or with `None`, clears) a device-code login in progress for `account`.
    pub async fn set_login_prompt(
        &self,
        account: &str,
        prompt: Option<LoginPrompt>,
    ) -> Result<(), StoreError> {
        let name = account.to_owned();
        self.run(move |files| files.set_login_prompt(&name, prompt.as_ref()))
            .await
    }

    /// The device-code login in progress for `account`, if one is recorded and not expired.
    pub async fn login_prompt(&self, account: &str) -> Option<LoginPrompt> {
        let name = account.to_owned();
        self.run(move |files| Ok(files.login_prompt(&name)))
            .await
            .ok()
            .flatten()
    }
}

/// Runs blocking file work on tokio's blocking pool; a task that cannot finish is an I/O
/// error about `dir`.
async fn blocking<T: Send + 'static>(
    dir: &Path,
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::io(dir, io::Error::other(e.to_string())))?
}

/// The blocking work of the store: one directory of sealed files and their lock files.
pub(crate) struct Files {
    dir: PathBuf,
    key: LessSafeKey,
    key_id: String,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Files {
    fn open(dir: PathBuf, key: LessSafeKey, key_id: String) -> Result<Self, StoreError> {
        create_dir_private(&dir)?;
        Ok(Files { dir, key, key_id })
    }

    fn path(&self, account: &str) -> PathBuf {
        self.dir.join(format!("{account}.token"))
    }

    fn lock_path(&self, account: &str) -> PathBuf {
        self.dir.join(format!(".{account}.lock"))
    }

    fn prompt_path(&self, account: &str) -> PathBuf {
        self.dir.join(format!("{account}.login.json"))
    }

    fn load(&self, account: &str) -> Result<Option<StoredToken>, StoreError> {
        let path = self.path(account);
        let mut text = String::new();
        match File::open(&path) {
            Ok(f) => f
                .take(MAX_FILE)
                .read_to_string(&mut text)
                .map_err(|e| StoreError::io(&path, e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        self.open_text(account, &path, &text).map(Some)
    }

    fn open_text(&self, account: &str, path: &Path, text: &str) -> Result<StoredToken, StoreError> {
        let corrupt = |detail: &str| StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: detail.to_owned(),
        };
        let (header, body) = text
            .split_once('\n')
            .ok_or_else(|| corrupt("no header line"))?;
        let file_key = header
            .strip_prefix(MAGIC)
            .and_then(|rest| rest.strip_prefix(" key="))
            .filter(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| corrupt("the header line is not `smtp2oauth-token v1 ...`"))?;
        if file_key != self.key_id {
            return Err(StoreError::WrongKey {
                path: path.to_path_buf(),
                file_key: file_key.to_owned(),
                key: self.key_id.clone(),
            });
        }
        let tampered = || StoreError::Tampered {
            path: path.to_path_buf(),
            key: self.key_id.clone(),
        };
        let mut sealed = STANDARD.decode(body.trim()).map_err(|_| tampered())?;
        if sealed.len() < NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return Err(tampered());
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[..NONCE_LEN]);
        let aad = format!("{header}\n{account}");
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut sealed[NONCE_LEN..],
            )
            .map_err(|_| tampered())?;
        let record: Record = serde_json::from_slice(plain).map_err(|_| tampered())?;
        plain.fill(0);
        if record.account != account {
            return Err(tampered());
        }
        Ok(StoredToken {
            refresh_token: record.refresh_token.map(Secret::from),
            client_id: record.client_id,
            flow: record.flow,
            scope: record.scope,
            signed_in_at: record.signed_in_at.map(from_unix),
            last_refresh: record.last_refresh.map(from_unix),
            last_error: record.last_error,
            sign_in_required: record.sign_in_required,
            generation: record.generation,
        })
    }

    fn seal(&self, account: &str, token: &StoredToken) -> String {
        let record = Record {
            account: account.to_owned(),
            refresh_token: token.refresh_token.as_ref().map(|s| s.expose().to_owned()),
            client_id: token.client_id.clone(),
            flow: token.flow.clone(),
            scope: token.scope.clone(),
            signed_in_at: token.signed_in_at.map(to_unix),
            last_refresh: token.last_refresh.map(to_unix),
            last_error: token.last_error.clone(),
            sign_in_required: token.sign_in_required,
            generation: token.generation,
        };
        let mut plain = serde_json::to_vec(&record).expect("a record always serialises");
        drop(record);
        let header = format!("{MAGIC} key={}", self.key_id);
        let aad = format!("{header}\n{account}");
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the operating system's random number generator is unavailable");
        let mut sealed = nonce.to_vec();
        let start = sealed.len();
        sealed.extend_from_slice(&plain);
        plain.fill(0);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut sealed[start..],
            )
            .expect("ChaCha20-Poly1305 seals any message this small");
        sealed.extend_from_slice(tag.as_ref());
        format!("{header}\n{}\n", STANDARD.encode(&sealed))
    }

    /// Replaces `account`'s file with `token` as it is (generation included), atomically and
    /// durably. Only [`update`](Self::update) calls it, under the account's lock.
    fn save(&self, account: &str, token: &StoredToken) -> Result<(), StoreError> {
        let path = self.path(account);
        let text = self.seal(account, token);
        let tmp = self.dir.join(format!(
            ".{account}.{}.{}.tmp",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let written = write_private(&tmp, text.as_bytes())
            .and_then(|()| fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e)));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        sync_dir(&self.dir)
    }

    fn update<F>(&self, account: &str, change: F) -> Result<Option<StoredToken>, StoreError>
    where
        F: FnOnce(Option<&StoredToken>) -> Option<StoredToken>,
    {
        let _lock = self.lock(account)?;
        let current = self.load(account)?;
        match change(current.as_ref()) {
            None => Ok(current),
            Some(mut next) => {
                next.generation = current.as_ref().map_or(0, |c| c.generation) + 1;
                self.save(account, &next)?;
                Ok(Some(next))
            }
        }
    }

    /// Deletes `account`'s file (sign out). Returns whether there was one.
    fn remove(&self, account: &str) -> Result<bool, StoreError> {
        let _lock = self.lock(account)?;
        let path = self.path(account);
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }

    fn stamp(&self, account: &str) -> Option<FileStamp> {
        let path = self.path(account);
        let meta = fs::metadata(&path).ok()?;
        Some(FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: smtp2oauth_platform::file_id(&path).ok()?,
        })
    }

    fn set_login_prompt(
        &self,
        account: &str,
        prompt: Option<&LoginPrompt>,
    ) -> Result<(), StoreError> {
        let path = self.prompt_path(account);
        match prompt {
            None => match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(StoreError::io(&path, e)),
            },
            Some(prompt) => {
                let tmp = self
                    .dir
                    .join(format!(".{account}.login.{}.tmp", std::process::id()));
                let json = serde_json::to_vec(prompt).expect("a prompt always serialises");
                write_private(&tmp, &json)?;
                fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))
            }
        }
    }

    fn login_prompt(&self, account: &str) -> Option<LoginPrompt> {
        let text = fs::read(self.prompt_path(account)).ok()?;
        let prompt: LoginPrompt = serde_json::from_slice(&text).ok()?;
        (prompt.expires_at > to_unix(SystemTime::now())).then_some(prompt)
    }

    /// Takes the account's exclusive lock (an `flock`, shared with other processes), waiting
    /// for it; released when the returned file is closed.
    fn lock(&self, account: &str) -> Result<File, StoreError> {
        let path = self.lock_path(account);
        let file = smtp2oauth_platform::open_private(
            OpenOptions::new().create(true).truncate(false).write(true),
            &path,
        )
        .map_err(|e| StoreError::io(&path, e))?;
        loop {
            match file.lock() {
                Ok(()) => return Ok(file),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::io(&path, e)),
            }
        }
    }
}

/// Account names of the `*.token` files in `dir` (none if it does not exist).
fn token_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .filter_map(|n| n.strip_suffix(".token").map(str::to_owned))
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// Creates `dir` and its missing ancestors, private (mode 0700 on Unix, a protected ACL on
/// Windows).
fn create_dir_private(dir: &Path) -> Result<(), StoreError> {
    smtp2oauth_platform::create_private_dir_all(dir).map_err(|e| StoreError::io(dir, e))
}

/// Creates (or truncates) `path`, private (mode 0600 on Unix), writes `bytes` and fsyncs.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut f = smtp2oauth_platform::open_private(
        OpenOptions::new().write(true).create(true).truncate(true),
        path,
    )
    .map_err(|e| StoreError::io(path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| StoreError::io(path, e))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    smtp2oauth_platform::sync_dir(dir).map_err(|e| StoreError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const RT: &str = "0.AAAA-refresh-token-value-that-must-never-appear-in-clear";

    fn files(dir: &Path, key: &MasterKey) -> Files {
        Files::open(dir.to_path_buf(), key.file_key(), key.id()).unwrap()
    }

    fn sample() -> StoredToken {
        StoredToken {
            refresh_token: Some(Secret::from(RT)),
            client_id: "11111111-2222-3333-4444-555555555555".into(),
            flow: "device_code".into(),
            scope: Some("https://outlook.office.com/SMTP.Send".into()),
            signed_in_at: Some(from_unix(1_700_000_000)),
            last_refresh: None,
            last_error: None,
            sign_in_required: false,
            generation: 0,
        }
    }

    #[test]
    fn round_trip_and_nothing_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate();
        let store = files(&dir.path().join("tokens"), &key);
        assert_eq!(store.load("scanner").unwrap(), None);
        let written = store
            .update("scanner", |old| {
                assert!(old.is_none());
                Some(sample())
            })
            .unwrap()
            .unwrap();
        assert_eq!(written.generation, 1);
        let read = store.load("scanner").unwrap().unwrap();
        assert_eq!(read, written);
        let raw = fs::read_to_string(store.path("scanner")).unwrap();
        assert!(raw.starts_with(MAGIC), "{raw}");
        assert!(!raw.contains("refresh-token"), "{raw}");
        assert!(!raw.contains("outlook"), "{raw}");
        let mode = fs::metadata(store.path("scanner"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(&store.dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(token_files(&store.dir), vec!["scanner".to_string()]);
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(&store.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
        assert!(!format!("{read:?}").contains("refresh-token"));
    }

    #[test]
    fn wrong_key_tampering_and_swaps_are_distinct_errors() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate();
        let store = files(dir.path(), &key);
        store.update("scanner", |_| Some(sample())).unwrap();
        let original = fs::read(store.path("scanner")).unwrap();

        let other = files(dir.path(), &MasterKey::generate());
        let e = other.load("scanner").unwrap_err();
        assert!(matches!(e, StoreError::WrongKey { .. }), "{e}");
        assert!(e.to_string().contains("different master key"), "{e}");
        assert!(e.to_string().contains(&key.id()), "{e}");

        // Flip one bit of the sealed body: authentication fails.
        let mut bytes = original.clone();
        let body_start = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
        let i = body_start + 20;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        fs::write(store.path("scanner"), &bytes).unwrap();
        let e = store.load("scanner").unwrap_err();
        assert!(matches!(e, StoreError::Tampered { .. }), "{e}");
        assert!(e.to_string().contains("modified or damaged"), "{e}");

        // Another account's file renamed into place: the account is authenticated too.
        fs::write(store.path("printer"), &original).unwrap();
        let e = store.load("printer").unwrap_err();
        assert!(matches!(e, StoreError::Tampered { .. }), "{e}");

        fs::write(store.path("scanner"), b"{\"refresh_token\":\"x\"}").unwrap();
        let e = store.load("scanner").unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");

        // A failed load never rewrites the file.
        fs::write(store.path("scanner"), &bytes).unwrap();
        assert!(store.update("scanner", |_| Some(sample())).is_err());
        assert_eq!(fs::read(store.path("scanner")).unwrap(), bytes);
    }

    #[test]
    fn master_key_sources_and_generation() {
        let dir = tempfile::tempdir().unwrap();
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let (k, origin) = load_master_key(Some(hex), None, dir.path(), true)
            .unwrap()
            .unwrap();
        assert_eq!(origin, KeyOrigin::Environment);
        assert_eq!(k.to_hex().expose(), hex.to_ascii_lowercase());
        assert!(!format!("{k:?}").contains("0011"));

        let file = dir.path().join("key");
        fs::write(&file, format!("  {hex}\n")).unwrap();
        let (k2, origin) = load_master_key(None, Some(&file), dir.path(), true)
            .unwrap()
            .unwrap();
        assert_eq!(origin, KeyOrigin::File(file.clone()));
        assert_eq!(k2.id(), k.id());

        for (text, detail) in [
            ("", "empty"),
            ("abc", "3 characters"),
            (&"g".repeat(64)[..], "not hexadecimal"),
        ] {
            let e = MasterKey::from_hex(text, "test").unwrap_err().to_string();
            assert!(e.contains(detail), "{e}");
            assert!(e.contains("smtp2oauth keygen"), "{e}");
        }
        let e = load_master_key(None, Some(&dir.path().join("missing")), dir.path(), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read the master key file"), "{e}");

        // First start: generated with mode 0600; later starts read the same key.
        let store_dir = dir.path().join("store");
        assert!(
            load_master_key(None, None, &store_dir, false)
                .unwrap()
                .is_none()
        );
        assert!(!store_dir.exists(), "a read-only look creates nothing");
        let (gen_key, origin) = load_master_key(None, None, &store_dir, true)
            .unwrap()
            .unwrap();
        let path = store_dir.join(MASTER_KEY_FILE);
        assert_eq!(origin, KeyOrigin::Generated(path.clone()));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (again, origin) = load_master_key(None, None, &store_dir, false)
            .unwrap()
            .unwrap();
        assert_eq!(origin, KeyOrigin::File(path.clone()));
        assert_eq!(again.id(), gen_key.id());

        // Token files without their key: never a new key.
        let store = files(&store_dir.join("tokens"), &gen_key);
        store.update("scanner", |_| Some(sample())).unwrap();
        fs::remove_file(&path).unwrap();
        let e = load_master_key(None, None, &store_dir, true).unwrap_err();
        assert!(matches!(e, StoreError::MissingKey { .. }), "{e}");
        assert!(!path.exists());
    }

    #[test]
    fn concurrent_updates_never_lose_a_generation() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate();
        let path = dir.path().to_path_buf();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = files(&path, &key);
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        store
                            .update("scanner", |old| Some(old.cloned().unwrap_or_else(sample)))
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let store = files(&path, &key);
        assert_eq!(store.load("scanner").unwrap().unwrap().generation, 40);
    }

    #[test]
    fn login_prompts_expire_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let store = files(dir.path(), &MasterKey::generate());
        let mut prompt = LoginPrompt {
            user_code: "ABCD-EFGH".into(),
            verification_uri: "https://microsoft.com/devicelogin".into(),
            expires_at: to_unix(SystemTime::now()) + 600,
            started_by: "test".into(),
        };
        store.set_login_prompt("scanner", Some(&prompt)).unwrap();
        assert_eq!(store.login_prompt("scanner"), Some(prompt.clone()));
        prompt.expires_at = 1;
        store.set_login_prompt("scanner", Some(&prompt)).unwrap();
        assert_eq!(store.login_prompt("scanner"), None);
        store.set_login_prompt("scanner", None).unwrap();
        store.set_login_prompt("scanner", None).unwrap();
        assert!(token_files(&store.dir).is_empty());
    }

    /// The async face: the same files, and the record last read or written remembered without
    /// touching the disk again.
    #[tokio::test]
    async fn the_async_face_remembers_what_it_last_saw() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate();
        let store = TokenStore::open(&dir.path().join("tokens"), &key)
            .await
            .unwrap();
        assert_eq!(store.last_known("scanner"), None);
        assert_eq!(store.load("scanner").await.unwrap(), None);
        assert_eq!(store.last_known("scanner"), Some(None));
        let written = store.update("scanner", |_| Some(sample())).await.unwrap();
        assert_eq!(store.last_known("scanner"), Some(written.clone()));
        // Another process (here: the blocking files) changes the file: only a load sees it.
        files(store.dir(), &key).remove("scanner").unwrap();
        assert_eq!(store.last_known("scanner"), Some(written));
        assert!(store.stamp("scanner").await.is_none());
        assert_eq!(store.load("scanner").await.unwrap(), None);
        assert_eq!(store.last_known("scanner"), Some(None));
        store.update("scanner", |_| Some(sample())).await.unwrap();
        assert!(store.sign_out("scanner").await.unwrap());
        assert_eq!(store.last_known("scanner"), Some(None));
        assert!(store.accounts().await.is_empty());
    }
}
