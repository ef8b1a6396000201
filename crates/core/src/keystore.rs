//! The master keys that wrap every account's data key, behind one trait with two homes: a local
//! file (development) and a PKCS#11 token (the interface of the hardware security modules that
//! payment companies keep their master keys in; SoftHSM2 in the tests).
//!
//! A master key has a **generation** (1, 2, ...). Data keys are wrapped under the current one
//! (AES-256-GCM, the account as associated data). `bindledger keys rotate` makes a new generation
//! current, rewraps every data key still held under it, and destroys the older generations: a
//! wrapped key that a copy still holds from before (a Kafka topic not yet compacted, a backup, an
//! erased account's key) opens under no master key any more.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};

/// A data key wrapped under one generation of the master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrapped {
    pub generation: u32,
    /// The store's own format (for both stores here: a 12-byte nonce, then ciphertext and tag).
    pub bytes: Vec<u8>,
}

impl Wrapped {
    /// `generation` (4 bytes, big-endian), then the bytes: the form stored and published.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(4 + self.bytes.len());
        v.extend_from_slice(&self.generation.to_be_bytes());
        v.extend_from_slice(&self.bytes);
        v
    }

    pub fn from_bytes(b: &[u8]) -> Option<Wrapped> {
        let (g, rest) = b.split_first_chunk::<4>()?;
        (!rest.is_empty()).then(|| Wrapped {
            generation: u32::from_be_bytes(*g),
            bytes: rest.to_vec(),
        })
    }
}

/// A data key in the clear (only ever in memory).
pub type DataKeyBytes = [u8; 32];

/// Where the master keys live. Every method may block (a PKCS#11 token is a device).
pub trait KeyStore: Send + Sync {
    /// What and where, for `status` and logs (no secret).
    fn describe(&self) -> String;
    /// The generation new data keys are wrapped under.
    fn current(&self) -> u32;
    /// The generations held, oldest first.
    fn generations(&self) -> Result<Vec<u32>>;
    /// Wraps a data key under the current generation, bound to `aad` (the account).
    fn wrap(&self, key: &DataKeyBytes, aad: &[u8]) -> Result<Wrapped>;
    /// Opens a wrapped key; `Ok(None)` when its generation is gone or it does not open.
    fn unwrap(&self, wrapped: &Wrapped, aad: &[u8]) -> Result<Option<DataKeyBytes>>;
    /// Makes a new generation the current one; returns it.
    fn rotate(&self) -> Result<u32>;
    /// Destroys a generation that is not the current one.
    fn destroy(&self, generation: u32) -> Result<()>;
}

fn random(out: &mut [u8]) -> Result<()> {
    SystemRandom::new()
        .fill(out)
        .map_err(|_| Error::io("the operating system's random generator failed"))
}

fn aes_key(bytes: &[u8]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte AES-256 key"))
}

/// Seals `plain` with AES-256-GCM under a fresh random nonce: nonce, then ciphertext and tag.
fn seal_random(key: &LessSafeKey, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    let mut nonce = [0u8; 12];
    random(&mut nonce)?;
    let mut buf = plain.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)
        .map_err(|_| Error::io("sealing failed"))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(out)
}

fn open_random(key: &LessSafeKey, sealed: &[u8], aad: &[u8]) -> Option<DataKeyBytes> {
    let (nonce, rest) = sealed.split_first_chunk::<12>()?;
    let mut buf = rest.to_vec();
    let plain = key
        .open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), &mut buf)
        .ok()?;
    plain.try_into().ok()
}

/// The development key store: the master keys in one file (mode 0600), hex, one generation a
/// line (`<generation> <64 hex>`), the highest current. Anyone who can read the file can open
/// every wrapped key: production keeps its master keys in a PKCS#11 token.
pub struct FileKeyStore {
    path: PathBuf,
    keys: Mutex<Vec<(u32, LessSafeKey)>>,
}

impl FileKeyStore {
    /// Opens the file, creating it with a first generation if it does not exist.
    pub fn open(path: &Path) -> Result<FileKeyStore> {
        if !path.exists() {
            let mut k = [0u8; 32];
            random(&mut k)?;
            write_file(path, &[(1, k)])?;
        }
        let keys = read_file(path)?.into_iter().map(|(g, k)| (g, aes_key(&k))).collect();
        Ok(FileKeyStore {
            path: path.to_owned(),
            keys: Mutex::new(keys),
        })
    }
}

/// Reads the key file: its generations and keys, oldest first; a line that is not
/// `<generation> <64 hex>`, a generation twice, or no key at all is refused, naming the line.
fn read_file(path: &Path) -> Result<Vec<(u32, DataKeyBytes)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io_caused(format!("reading the master key file {}", path.display()), e))?;
    let mut keys: Vec<(u32, DataKeyBytes)> = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = || {
            Error::config(format!(
                "{} line {}: expected `<generation> <64 hex>`",
                path.display(),
                n + 1
            ))
        };
        let (g, k) = line.trim().split_once(' ').ok_or_else(bad)?;
        let g: u32 = g.parse().map_err(|_| bad())?;
        let k: DataKeyBytes = hex::decode(k).ok().and_then(|k| k.try_into().ok()).ok_or_else(bad)?;
        if g == 0 || keys.iter().any(|(h, _)| *h == g) {
            return Err(bad());
        }
        keys.push((g, k));
    }
    if keys.is_empty() {
        return Err(Error::config(format!("{} holds no master key", path.display())));
    }
    keys.sort_by_key(|(g, _)| *g);
    Ok(keys)
}

/// Writes the key file whole: a temporary file (0600), fsync, rename, fsync of the directory.
fn write_file(path: &Path, keys: &[(u32, DataKeyBytes)]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |what: &str, e| Error::io_caused(format!("{what} the master key file {}", path.display()), e);
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("writing", e))?;
    let text: String = keys.iter().map(|(g, k)| format!("{g} {}\n", hex::encode(k))).collect();
    f.write_all(text.as_bytes()).map_err(|e| io("writing", e))?;
    f.sync_all().map_err(|e| io("syncing", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("replacing", e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing the directory of", e))?;
    }
    Ok(())
}

impl FileKeyStore {
    /// Rewrites the file from its current lines, without `drop` and with `add`.
    fn rewrite(&self, drop: Option<u32>, add: Option<(u32, DataKeyBytes)>) -> Result<()> {
        let mut lines = read_file(&self.path)?;
        lines.retain(|(g, _)| Some(*g) != drop);
        lines.extend(add);
        write_file(&self.path, &lines)
    }
}

impl KeyStore for FileKeyStore {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
    fn current(&self) -> u32 {
        self.keys.lock().expect("lock").last().map_or(0, |(g, _)| *g)
    }
    fn generations(&self) -> Result<Vec<u32>> {
        Ok(self.keys.lock().expect("lock").iter().map(|(g, _)| *g).collect())
    }
    fn wrap(&self, key: &DataKeyBytes, aad: &[u8]) -> Result<Wrapped> {
        let keys = self.keys.lock().expect("lock");
        let (g, master) = keys.last().expect("a key store holds a key");
        Ok(Wrapped {
            generation: *g,
            bytes: seal_random(master, key, aad)?,
        })
    }
    fn unwrap(&self, wrapped: &Wrapped, aad: &[u8]) -> Result<Option<DataKeyBytes>> {
        let mut keys = self.keys.lock().expect("lock");
        if !keys.iter().any(|(g, _)| *g == wrapped.generation)
            && wrapped.generation > keys.last().map_or(0, |(g, _)| *g)
        {
            // A newer generation: another node of the ledger rotated the shared file.
            *keys = FileKeyStore::open(&self.path)?.keys.into_inner().expect("lock");
        }
        Ok(keys
            .iter()
            .find(|(g, _)| *g == wrapped.generation)
            .and_then(|(_, k)| open_random(k, &wrapped.bytes, aad)))
    }
    fn rotate(&self) -> Result<u32> {
        let mut keys = self.keys.lock().expect("lock");
        let next = keys.last().map_or(1, |(g, _)| g + 1);
        let mut k = [0u8; 32];
        random(&mut k)?;
        self.rewrite(None, Some((next, k)))?;
        keys.push((next, aes_key(&k)));
        Ok(next)
    }
    fn destroy(&self, generation: u32) -> Result<()> {
        let mut keys = self.keys.lock().expect("lock");
        if keys.last().is_some_and(|(g, _)| *g == generation) {
            return Err(Error::config("the current master key cannot be destroyed"));
        }
        self.rewrite(Some(generation), None)?;
        keys.retain(|(g, _)| *g != generation);
        Ok(())
    }
}

/// The PKCS#11 key store: the master keys are AES-256 secret keys on a token (labelled
/// `<label>-<generation>`, sensitive, never extractable); wrapping and unwrapping are
/// `C_Encrypt` and `C_Decrypt` with `CKM_AES_GCM` on the token, so a master key never leaves it.
pub struct Pkcs11KeyStore {
    describe: String,
    label: String,
    session: Mutex<cryptoki::session::Session>,
    /// Generation and object handle of each master key, oldest first.
    keys: Mutex<Vec<(u32, cryptoki::object::ObjectHandle)>>,
    // Kept alive for the session's sake.
    _ctx: cryptoki::context::Pkcs11,
}

/// Where a PKCS#11 master key lives.
#[derive(Debug, Clone)]
pub struct Pkcs11Config {
    /// The token's library (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token's label.
    pub token: String,
    /// The user PIN.
    pub pin: String,
    /// The master keys' label prefix.
    pub label: String,
}

impl Pkcs11KeyStore {
    pub fn open(c: &Pkcs11Config) -> Result<Pkcs11KeyStore> {
        use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
        use cryptoki::session::UserType;
        let what = |w: &'static str| move |e: cryptoki::error::Error| Error::config(format!("PKCS#11: {w}: {e}"));
        let ctx = Pkcs11::new(&c.module).map_err(what("loading the module"))?;
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(what("initializing"))?;
        let slot = ctx
            .get_slots_with_token()
            .map_err(what("listing the slots"))?
            .into_iter()
            .find(|s| ctx.get_token_info(*s).is_ok_and(|t| t.label() == c.token))
            .ok_or_else(|| Error::config("PKCS#11: no token has the configured label"))?;
        let session = ctx.open_rw_session(slot).map_err(what("opening a session"))?;
        session
            .login(
                UserType::User,
                Some(&cryptoki::types::AuthPin::new(c.pin.clone().into())),
            )
            .map_err(what("logging in"))?;
        let store = Pkcs11KeyStore {
            describe: format!("pkcs11 token {:?} ({})", c.token, c.module.display()),
            label: c.label.clone(),
            session: Mutex::new(session),
            keys: Mutex::new(Vec::new()),
            _ctx: ctx,
        };
        store.load()?;
        if store.keys.lock().expect("lock").is_empty() {
            store.rotate()?;
        }
        Ok(store)
    }

    /// Finds the master keys on the token.
    fn load(&self) -> Result<()> {
        use cryptoki::object::{Attribute, AttributeType, ObjectClass};
        let session = self.session.lock().expect("lock");
        let found = session
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
            .map_err(|e| Error::io(format!("PKCS#11: finding the master keys: {e}")))?;
        let prefix = format!("{}-", self.label);
        let mut keys = Vec::new();
        for h in found {
            let attrs = session
                .get_attributes(h, &[AttributeType::Label])
                .map_err(|e| Error::io(format!("PKCS#11: reading a key's label: {e}")))?;
            for a in attrs {
                if let Attribute::Label(l) = a {
                    let g = std::str::from_utf8(&l)
                        .ok()
                        .and_then(|l| l.strip_prefix(&prefix))
                        .and_then(|g| g.parse::<u32>().ok());
                    if let Some(g) = g {
                        keys.push((g, h));
                    }
                }
            }
        }
        keys.sort_by_key(|(g, _)| *g);
        *self.keys.lock().expect("lock") = keys;
        Ok(())
    }

    fn gcm(
        &self,
        key: cryptoki::object::ObjectHandle,
        encrypt: bool,
        iv: &mut [u8; 12],
        aad: &[u8],
        data: &[u8],
    ) -> std::result::Result<Vec<u8>, cryptoki::error::Error> {
        use cryptoki::mechanism::{aead::GcmParams, Mechanism};
        let params = GcmParams::new(iv, aad, 128.into())?;
        let m = Mechanism::AesGcm(params);
        let session = self.session.lock().expect("lock");
        if encrypt {
            session.encrypt(&m, key, data)
        } else {
            session.decrypt(&m, key, data)
        }
    }
}

impl KeyStore for Pkcs11KeyStore {
    fn describe(&self) -> String {
        self.describe.clone()
    }
    fn current(&self) -> u32 {
        self.keys.lock().expect("lock").last().map_or(0, |(g, _)| *g)
    }
    fn generations(&self) -> Result<Vec<u32>> {
        Ok(self.keys.lock().expect("lock").iter().map(|(g, _)| *g).collect())
    }
    fn wrap(&self, key: &DataKeyBytes, aad: &[u8]) -> Result<Wrapped> {
        let (g, h) = *self.keys.lock().expect("lock").last().expect("a key store holds a key");
        let mut iv = [0u8; 12];
        random(&mut iv)?;
        let ct = self
            .gcm(h, true, &mut iv.clone(), aad, key)
            .map_err(|e| Error::io(format!("PKCS#11: wrapping a data key: {e}")))?;
        let mut bytes = iv.to_vec();
        bytes.extend_from_slice(&ct);
        Ok(Wrapped { generation: g, bytes })
    }
    fn unwrap(&self, wrapped: &Wrapped, aad: &[u8]) -> Result<Option<DataKeyBytes>> {
        let find = || {
            self.keys
                .lock()
                .expect("lock")
                .iter()
                .find(|(g, _)| *g == wrapped.generation)
                .map(|(_, h)| *h)
        };
        let mut found = find();
        if found.is_none() && wrapped.generation > self.current() {
            // A newer generation: another node of the ledger rotated the token's keys.
            self.load()?;
            found = find();
        }
        let Some(h) = found else {
            return Ok(None);
        };
        let Some((iv, ct)) = wrapped.bytes.split_first_chunk::<12>() else {
            return Ok(None);
        };
        match self.gcm(h, false, &mut iv.clone(), aad, ct) {
            Ok(plain) => Ok(plain.try_into().ok()),
            // A tag that does not verify: not this key's (SoftHSM2 answers a general error).
            Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::EncryptedDataInvalid
                | cryptoki::error::RvError::EncryptedDataLenRange
                | cryptoki::error::RvError::GeneralError,
                _,
            )) => Ok(None),
            Err(e) => Err(Error::io(format!("PKCS#11: unwrapping a data key: {e}"))),
        }
    }
    fn rotate(&self) -> Result<u32> {
        use cryptoki::mechanism::Mechanism;
        use cryptoki::object::Attribute;
        let next = self.current() + 1;
        let template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::ValueLen(32.into()),
            Attribute::Label(format!("{}-{next}", self.label).into_bytes()),
        ];
        let h = self
            .session
            .lock()
            .expect("lock")
            .generate_key(&Mechanism::AesKeyGen, &template)
            .map_err(|e| Error::io(format!("PKCS#11: generating a master key: {e}")))?;
        self.keys.lock().expect("lock").push((next, h));
        Ok(next)
    }
    fn destroy(&self, generation: u32) -> Result<()> {
        if self.current() == generation {
            return Err(Error::config("the current master key cannot be destroyed"));
        }
        let mut keys = self.keys.lock().expect("lock");
        if let Some(i) = keys.iter().position(|(g, _)| *g == generation) {
            self.session
                .lock()
                .expect("lock")
                .destroy_object(keys[i].1)
                .map_err(|e| Error::io(format!("PKCS#11: destroying a master key: {e}")))?;
            keys.remove(i);
        }
        Ok(())
    }
}

/// Opens the key store the configuration names (`keys.store`).
pub fn open(config: &crate::config::Config) -> Result<std::sync::Arc<dyn KeyStore>> {
    let k = &config.keys;
    match k.store.as_str() {
        "file" => Ok(std::sync::Arc::new(FileKeyStore::open(&config.master_keys_path())?)),
        "pkcs11" => {
            let module = k.pkcs11_module.clone().ok_or_else(|| {
                Error::config("keys.store = \"pkcs11\" needs keys.pkcs11_module (the token's library)")
            })?;
            if k.pkcs11_token.is_empty() {
                return Err(Error::config(
                    "keys.store = \"pkcs11\" needs keys.pkcs11_token (the token's label)",
                ));
            }
            let pin =
                match (std::env::var("BINDLEDGER_PKCS11_PIN").ok(), &k.pkcs11_pin_file) {
                    (Some(p), _) => p,
                    (None, Some(f)) => std::fs::read_to_string(f)
                        .map_err(|e| Error::io_caused(format!("reading the PIN file {}", f.display()), e))?
                        .trim()
                        .to_owned(),
                    (None, None) => return Err(Error::config(
                        "keys.store = \"pkcs11\" needs the token's PIN: keys.pkcs11_pin_file or BINDLEDGER_PKCS11_PIN",
                    )),
                };
            Ok(std::sync::Arc::new(Pkcs11KeyStore::open(&Pkcs11Config {
                module,
                token: k.pkcs11_token.clone(),
                pin,
                label: k.pkcs11_label.clone(),
            })?))
        }
        _ => Err(Error::config("keys.store is `file` or `pkcs11`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_store_wraps_rotates_and_forgets_a_destroyed_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.keys");
        let s = FileKeyStore::open(&path).unwrap();
        assert_eq!(s.current(), 1);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let k = [7u8; 32];
        let w1 = s.wrap(&k, b"acct-1").unwrap();
        assert_eq!(s.unwrap(&w1, b"acct-1").unwrap(), Some(k));
        assert_eq!(s.unwrap(&w1, b"acct-2").unwrap(), None, "bound to its account");
        assert_eq!(Wrapped::from_bytes(&w1.to_bytes()), Some(w1.clone()));
        assert_eq!(s.rotate().unwrap(), 2);
        let w2 = s.wrap(&k, b"acct-1").unwrap();
        assert_eq!(w2.generation, 2);
        // Reopened from the file: both generations.
        let s = FileKeyStore::open(&path).unwrap();
        assert_eq!(s.generations().unwrap(), vec![1, 2]);
        assert_eq!(s.unwrap(&w1, b"acct-1").unwrap(), Some(k));
        assert!(s.destroy(2).is_err(), "the current one stays");
        s.destroy(1).unwrap();
        assert_eq!(s.unwrap(&w1, b"acct-1").unwrap(), None);
        let s = FileKeyStore::open(&path).unwrap();
        assert_eq!(s.generations().unwrap(), vec![2]);
        assert_eq!(s.unwrap(&w1, b"acct-1").unwrap(), None, "gone from the file too");
        assert_eq!(s.unwrap(&w2, b"acct-1").unwrap(), Some(k));
    }
}
