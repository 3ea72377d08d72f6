//! Keys, encryption and decryption: the key material of the read and write options (a raw
//! key or a passphrase, zeroed when dropped), keys derived from a passphrase as libsodium's
//! `crypto_pwhash` derives them (cached per salt and limits), the decrypt stage of
//! tensorizer's XSalsa20-Poly1305 chunks (`crypto_secretbox`, from RustCrypto's crates)
//! and plaid's own blocks (`docs/FORMAT.md` section 13): AEGIS-256X4 (libaegis, the
//! default) or AES-256-GCM (ring's, about seven times as fast here as RustCrypto's
//! `aes-gcm`), under a per-file key from RustCrypto's HKDF.

use std::sync::Arc;

use crypto_secretbox::aead::{AeadInPlace, KeyInit};
use crypto_secretbox::{Nonce, Tag, XSalsa20Poly1305};
use parking_lot::Mutex;
use zeroize::Zeroizing;

use ring::aead::{Aad, LessSafeKey, Nonce as GcmNonce, UnboundKey, AES_256_GCM};
use ring::rand::SecureRandom;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::format::plaid::{MAX_KDF_MEMORY, MAX_KDF_PASSES, MIN_KDF_MEMORY};
use crate::format::verify::Transform;
use crate::format::{proto, Encryption, Kdf, PlaidEncryption, TensorInfo};

/// Bytes of a key.
pub(crate) const KEY_LEN: usize = 32;
/// The most memory a reader spends on a file's key derivation unless told otherwise:
/// tensorizer's strongest preset (`SENSITIVE`, libsodium's `MEMLIMIT_SENSITIVE`), 1 GiB.
pub const DEFAULT_READ_KDF_MEMORY: u64 = 1 << 30;
/// The most passes a reader runs for a file's key derivation unless told otherwise (four
/// times tensorizer's strongest preset, 4): with the memory limit, about 16 s of one core
/// here, where the format's own limits (64 passes over 4 GiB) would cost minutes.
pub const DEFAULT_READ_KDF_PASSES: u64 = 16;
/// The writer's default passes for a passphrase: libsodium's `OPSLIMIT_MODERATE`, which is
/// tensorizer's default too.
pub(crate) const DEFAULT_KDF_PASSES: u64 = 3;
/// The writer's default memory for a passphrase: libsodium's `MEMLIMIT_MODERATE` (256 MiB),
/// tensorizer's default too.
pub(crate) const DEFAULT_KDF_MEMORY: u64 = 256 << 20;
/// Bytes of a GCM tag.
pub(crate) const TAG_LEN: usize = 16;
/// The associated data of the key check.
const KEY_CHECK_AAD: &[u8] = b"plaid key check";

pub(crate) type Key = Zeroizing<[u8; KEY_LEN]>;

/// A plaid file's key, by the file's encryption parameters (salt, cipher, nonce base and
/// key check: a key found for one file never serves another cipher or skips a check).
type FileKeyEntry = (PlaidEncryption, Arc<FileKey>);

/// Decrypts one chunk: given the cipher, the chunk's index, its range in the piece and
/// where its plaintext goes; false when it fails to authenticate.
type OpenChunk<'a> = dyn FnMut(&mut Cipher, u64, std::ops::Range<usize>, &mut [u8]) -> bool + 'a;

/// What decrypts: a raw key or a passphrase.
#[derive(Clone)]
enum Material {
    Key(Key),
    Passphrase(Zeroizing<Vec<u8>>),
}

/// The key material of read options, and the keys derived from a passphrase so far (shared
/// by clones of the options, so each salt and limits are derived once), with what a reader
/// holding it demands of a file: that its tensors are encrypted (unless plaintext is
/// allowed), and that deriving its key costs at most the limits. Every copy of a key or
/// passphrase is zeroed when dropped.
#[derive(Clone)]
pub(crate) struct Secret {
    material: Option<Material>,
    derived: Arc<Mutex<Vec<(Kdf, Key)>>>,
    /// The AES-GCM keys of plaid files opened so far, by their salt (checked against the
    /// file's key check before they were kept).
    files: Arc<Mutex<Vec<FileKeyEntry>>>,
    /// Whether tensors stored in the clear are read when key material is given (a mixed
    /// fleet's explicit choice); otherwise they are refused.
    allow_plaintext: bool,
    /// Where the key material came from, for the refusal of a file in the clear (the CLI:
    /// "the environment's PLAID_KEY").
    origin: Option<Arc<str>>,
    /// The most memory, in bytes, and passes a file's key derivation may take.
    max_kdf_memory: u64,
    max_kdf_passes: u64,
    /// The salt a writer derives a passphrase's key with; `None`: a fresh one per file.
    salt: Option<[u8; 16]>,
}

impl Default for Secret {
    fn default() -> Self {
        Secret {
            material: None,
            derived: Arc::default(),
            files: Arc::default(),
            allow_plaintext: false,
            origin: None,
            max_kdf_memory: DEFAULT_READ_KDF_MEMORY,
            max_kdf_passes: DEFAULT_READ_KDF_PASSES,
            salt: None,
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.material {
            None => "no key",
            Some(Material::Key(_)) => "a key",
            Some(Material::Passphrase(_)) => "a passphrase",
        })
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        let same_material = match (&self.material, &other.material) {
            (None, None) => true,
            (Some(Material::Key(a)), Some(Material::Key(b))) => a[..] == b[..],
            (Some(Material::Passphrase(a)), Some(Material::Passphrase(b))) => a[..] == b[..],
            _ => false,
        };
        same_material
            && self.allow_plaintext == other.allow_plaintext
            && self.origin == other.origin
            && self.max_kdf_memory == other.max_kdf_memory
            && self.max_kdf_passes == other.max_kdf_passes
            && self.salt == other.salt
    }
}

impl Eq for Secret {}

impl Secret {
    /// Derive a writer's passphrase key with `salt` (16 bytes, as tensorizer's
    /// `EncryptionParams.from_string(salt=...)`) instead of a fresh salt per file; `None`
    /// goes back to fresh salts. Another length is `InvalidArgument`.
    pub(crate) fn set_salt(&mut self, salt: Option<&[u8]>) -> Result<()> {
        self.salt = match salt {
            None => None,
            Some(salt) => Some(salt.try_into().map_err(|_| {
                Error::invalid(format!("a passphrase salt is 16 bytes, not {}", salt.len()))
            })?),
        };
        Ok(())
    }

    /// Use `key` (32 bytes); `None` clears the key material.
    pub(crate) fn set_key(&mut self, key: Option<&[u8]>) -> Result<()> {
        let key = match key {
            None => None,
            Some(key) => Some(Material::Key(Zeroizing::new(key.try_into().map_err(
                |_| Error::invalid(format!("a key is {KEY_LEN} bytes, not {}", key.len())),
            )?))),
        };
        self.set_material(key)
    }

    /// Use `passphrase` (any bytes); `None` clears the key material.
    pub(crate) fn set_passphrase(&mut self, passphrase: Option<&[u8]>) -> Result<()> {
        self.set_material(passphrase.map(|p| Material::Passphrase(Zeroizing::new(p.to_vec()))))
    }

    /// Replace the key material (`None` clears it); a key while a passphrase is set, or
    /// the reverse, is refused.
    fn set_material(&mut self, material: Option<Material>) -> Result<()> {
        // Keys derived so far belong to the old material (and to the deserializers that
        // share them): start afresh.
        self.derived = Arc::default();
        self.files = Arc::default();
        let clear_first = match (&material, &self.material) {
            (Some(Material::Key(_)), Some(Material::Passphrase(_))) => "passphrase",
            (Some(Material::Passphrase(_)), Some(Material::Key(_))) => "key",
            _ => {
                self.material = material;
                return Ok(());
            }
        };
        Err(Error::invalid(format!(
            "a key and a passphrase: give one (clear the {clear_first} first)"
        )))
    }

    /// Whether there is a key or a passphrase.
    pub(crate) fn is_set(&self) -> bool {
        self.material.is_some()
    }

    /// "passphrase" or "key", for messages.
    fn material_name(&self) -> &'static str {
        match self.material {
            Some(Material::Passphrase(_)) => "passphrase",
            _ => "key",
        }
    }

    /// Whether the key material is a passphrase.
    pub(crate) fn is_passphrase(&self) -> bool {
        matches!(self.material, Some(Material::Passphrase(_)))
    }

    /// Read tensors stored in the clear even though key material is given (`true`), or
    /// refuse them (`false`, the default).
    pub(crate) fn set_allow_plaintext(&mut self, allow: bool) {
        self.allow_plaintext = allow;
    }

    /// Whether tensors stored in the clear are read despite key material.
    pub(crate) fn allows_plaintext(&self) -> bool {
        self.allow_plaintext
    }

    /// Name where the key material came from, for messages (`None`: the caller gave it).
    pub(crate) fn set_origin(&mut self, origin: Option<&str>) {
        self.origin = origin.map(Arc::from);
    }

    /// Set the most memory (bytes) and passes a file's key derivation may take: at least
    /// the least a derivation can take, at most the format's limits (4 GiB, 64 passes).
    pub(crate) fn set_kdf_limits(&mut self, max_memory: u64, max_passes: u64) -> Result<()> {
        if !(MIN_KDF_MEMORY..=MAX_KDF_MEMORY).contains(&max_memory)
            || !(1..=MAX_KDF_PASSES).contains(&max_passes)
        {
            return Err(Error::invalid(format!(
                "passphrase limits of {max_memory} bytes and {max_passes} passes: memory is \
                 {MIN_KDF_MEMORY} to {MAX_KDF_MEMORY} bytes and passes 1 to {MAX_KDF_PASSES} \
                 (the format's limits)"
            )));
        }
        self.max_kdf_memory = max_memory;
        self.max_kdf_passes = max_passes;
        self.derived = Arc::default();
        self.files = Arc::default();
        Ok(())
    }

    /// The most memory (bytes) and passes a file's key derivation may take.
    pub(crate) fn kdf_limits(&self) -> (u64, u64) {
        (self.max_kdf_memory, self.max_kdf_passes)
    }

    /// Refuse `tensor` of `file`, stored in the clear, when key material was given and
    /// plaintext is not allowed: a reader that holds a key expects the file it was given the
    /// key for, and a file whose encryption was stripped (flag, field and tags removed,
    /// CRCs of the ciphertext still matching) would otherwise load its ciphertext, or any
    /// substituted plaintext, as the weights. Tensors with no stored bytes are exempt.
    pub(crate) fn check_clear(&self, file: &str, tensor: &TensorInfo) -> Result<()> {
        if self.material.is_none()
            || self.allow_plaintext
            || tensor.encryption.is_some()
            || tensor.zero_fill
            || tensor.nbytes == 0
        {
            return Ok(());
        }
        let what = self.material_name();
        let given = match &self.origin {
            Some(origin) => format!("a {what} was given ({origin})"),
            None => format!("a {what} was given"),
        };
        Err(Error::Decrypt(format!(
            "{file}: tensor '{}': expected an encrypted file; it is stored in the clear, and {given}: \
             a file whose encryption was removed would load whatever it holds as the weights. \
             If this file is meant to be read in the clear, allow it explicitly \
             (plaid_read_options_set_allow_plaintext, allow_plaintext=True, --allow-plaintext)",
            tensor.name
        )))
    }

    /// A new file's encryption, for a writer: fresh salts and nonce base from the
    /// operating system, the key (derived from the passphrase with `passes` and `memory`
    /// where there is one), or `None` without key material.
    pub(crate) fn sealer(&self, cipher: u32, passes: u64, memory: u64) -> Result<Option<Sealer>> {
        let Some((master, kdf)) = self.master(passes, memory)? else {
            return Ok(None);
        };
        let mut salt = [0u8; 32];
        let mut nonce_base = [0u8; 32];
        let nonce_len = nonce_len(cipher);
        random(&mut salt)?;
        random(&mut nonce_base[..nonce_len])?;
        let key = file_key(&master, &salt, cipher);
        let check = key_check(&key, &nonce_base);
        Ok(Some(Sealer {
            key: Arc::new(key),
            nonce_base,
            header: proto::Encryption {
                cipher,
                salt: salt.to_vec(),
                nonce_base: nonce_base[..nonce_len].to_vec(),
                passphrase: kdf.map(|kdf| proto::Passphrase {
                    passes: kdf.opslimit,
                    memory: kdf.memlimit,
                    salt: kdf.salt.to_vec(),
                }),
                key_check: check.to_vec(),
            },
        }))
    }

    /// The key a writer encrypts with, and how it was derived: the raw key, or the
    /// passphrase's key with a fresh salt and `passes` over `memory` bytes; `None` without
    /// key material.
    pub(crate) fn master(&self, passes: u64, memory: u64) -> Result<Option<(Key, Option<Kdf>)>> {
        Ok(match &self.material {
            None => None,
            Some(Material::Key(key)) => Some((key.clone(), None)),
            Some(Material::Passphrase(passphrase)) => {
                let salt = match self.salt {
                    Some(salt) => salt,
                    None => {
                        let mut salt = [0u8; 16];
                        random(&mut salt)?;
                        salt
                    }
                };
                let kdf = Kdf {
                    opslimit: passes,
                    memlimit: memory,
                    salt,
                };
                let key = derive(passphrase, &kdf).map_err(|why| match why {
                    Derivation::OutOfMemory(e) => Error::io("deriving the key of a passphrase", e),
                    Derivation::Params(why) => Error::invalid(why),
                })?;
                Some((key, Some(kdf)))
            }
        })
    }

    /// The AES-GCM key of a plaid file, checked against its key check (once per file).
    fn file_key_for(
        &self,
        file: &str,
        tensor: &TensorInfo,
        encryption: &PlaidEncryption,
    ) -> Result<Arc<FileKey>> {
        if let Some((_, key)) = self
            .files
            .lock()
            .iter()
            .find(|(known, _)| known == encryption)
        {
            return Ok(key.clone());
        }
        let master = self.key_for(file, tensor, encryption.kdf.as_ref())?;
        let key = file_key(&master, &encryption.salt, encryption.cipher);
        let check = key_check(&key, &encryption.nonce_base);
        // Compared without an early exit.
        let differ = check
            .iter()
            .zip(&encryption.key_check)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if differ != 0 {
            let what = self.material_name();
            return Err(Error::Decrypt(format!(
                "{file}: tensor '{}': wrong {what}: the file's key check fails (no data was decrypted)",
                tensor.name
            )));
        }
        let key = Arc::new(key);
        self.files.lock().push((encryption.clone(), key.clone()));
        Ok(key)
    }

    /// The key that decrypts `tensor` of `file`: the raw key, or the passphrase's key for the
    /// tensor's derivation parameters (derived once per salt and limits). No key material,
    /// or a passphrase for a tensor encrypted with a raw key, is `Decrypt`.
    fn key_for(&self, file: &str, tensor: &TensorInfo, kdf: Option<&Kdf>) -> Result<Key> {
        let name = &tensor.name;
        match (&self.material, kdf) {
            (None, _) => Err(Error::Decrypt(format!(
                "{file}: tensor '{name}' is encrypted and no key or passphrase was given"
            ))),
            (Some(Material::Key(key)), _) => Ok(key.clone()),
            (Some(Material::Passphrase(_)), None) => Err(Error::Decrypt(format!(
                "{file}: tensor '{name}' was encrypted with a raw key, not a passphrase: give the key"
            ))),
            (Some(Material::Passphrase(passphrase)), Some(kdf)) => {
                let mut derived = self.derived.lock();
                if let Some((_, key)) = derived.iter().find(|(k, _)| k == kdf) {
                    return Ok(key.clone());
                }
                if kdf.memlimit > self.max_kdf_memory || kdf.opslimit > self.max_kdf_passes {
                    return Err(Error::Decrypt(format!(
                        "{file}: tensor '{name}': its key derivation asks for {} passes over {} \
                         bytes, past this reader's limits ({} passes over {} bytes); if the file \
                         is trusted, raise them (plaid_read_options_set_passphrase_limits, \
                         passphrase_limits=, --kdf-max-memory/--kdf-max-passes)",
                        kdf.opslimit, kdf.memlimit, self.max_kdf_passes, self.max_kdf_memory
                    )));
                }
                let key = derive(passphrase, kdf).map_err(|why| match why {
                    Derivation::OutOfMemory(e) => Error::io(
                        format_args!("{file}: tensor '{name}': deriving its key"),
                        e,
                    ),
                    Derivation::Params(why) => Error::format(
                        file,
                        tensor.offset,
                        format!("tensor '{name}': its key derivation cannot run: {why}"),
                    ),
                })?;
                derived.push((kdf.clone(), key.clone()));
                Ok(key)
            }
        }
    }
}

/// Fill `out` from the operating system's secure random source.
pub(crate) fn random(out: &mut [u8]) -> Result<()> {
    ring::rand::SystemRandom::new().fill(out).map_err(|_| {
        Error::io(
            "drawing salts and nonces",
            std::io::Error::other("the operating system's random source failed"),
        )
    })
}

/// tensorizer's encryption of one tensor's data: XSalsa20-Poly1305 (`crypto_secretbox`)
/// per chunk of `chunk_size` bytes, chunk `i` under nonce `nonce + i`.
pub(crate) struct SecretboxSealer {
    cipher: XSalsa20Poly1305,
    /// The first chunk's nonce.
    pub(crate) nonce: [u8; 24],
    /// Bytes per chunk.
    pub(crate) chunk_size: u64,
}

impl SecretboxSealer {
    /// A sealer under `key` with a fresh random nonce.
    pub(crate) fn new(key: &[u8; KEY_LEN], chunk_size: u64) -> Result<SecretboxSealer> {
        let mut nonce = [0u8; 24];
        random(&mut nonce)?;
        Ok(SecretboxSealer {
            cipher: XSalsa20Poly1305::new(key.into()),
            nonce,
            chunk_size,
        })
    }

    /// Encrypt in place the chunks `bytes` holds from offset `at` (a multiple of the chunk
    /// size), returning their MACs.
    pub(crate) fn seal(&self, at: u64, bytes: &mut [u8]) -> Vec<[u8; 16]> {
        bytes
            .chunks_mut(self.chunk_size as usize)
            .enumerate()
            .map(|(k, chunk)| {
                let i = at / self.chunk_size + k as u64;
                let nonce = Decrypt::nonce(&self.nonce, i);
                let tag = self
                    .cipher
                    .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"", chunk)
                    .unwrap_or_else(|_| unreachable!("a chunk under 256 GiB always seals"));
                let mut mac = [0u8; 16];
                mac.copy_from_slice(&tag);
                mac
            })
            .collect()
    }
}

/// Why a key derivation did not run.
enum Derivation {
    /// The parameters are outside the format's limits or Argon2's.
    Params(String),
    /// The system refused the memory.
    OutOfMemory(std::io::Error),
}

/// libsodium's `crypto_pwhash(out, 32, passphrase, salt, opslimit, memlimit,
/// crypto_pwhash_ALG_ARGON2ID13)`: Argon2id v1.3, one lane, `memlimit / 1024` KiB. The
/// memory is allocated fallibly (a refusal is an error, never an abort) and zeroed before
/// it is freed (it holds values derived from the passphrase).
fn derive(passphrase: &[u8], kdf: &Kdf) -> std::result::Result<Key, Derivation> {
    if kdf.memlimit > MAX_KDF_MEMORY || kdf.opslimit > MAX_KDF_PASSES {
        return Err(Derivation::Params(format!(
            "{} passes over {} bytes, past the format's limits ({MAX_KDF_PASSES} passes, {MAX_KDF_MEMORY} bytes)",
            kdf.opslimit, kdf.memlimit
        )));
    }
    let params = argon2::Params::new(
        (kdf.memlimit / 1024) as u32,
        kdf.opslimit as u32,
        1,
        Some(KEY_LEN),
    )
    .map_err(|e| Derivation::Params(e.to_string()))?;
    let mut blocks: Vec<argon2::Block> = Vec::new();
    blocks
        .try_reserve_exact(params.block_count())
        .map_err(|_| {
            Derivation::OutOfMemory(std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                format!(
                    "out of memory: the system refused the {} bytes of the key derivation's memory",
                    kdf.memlimit
                ),
            ))
        })?;
    blocks.resize(params.block_count(), argon2::Block::default());
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    let hashed = argon
        .hash_password_into_with_memory(passphrase, &kdf.salt, &mut key[..], &mut blocks[..])
        .map_err(|e| Derivation::Params(e.to_string()));
    blocks.iter_mut().for_each(zeroize::Zeroize::zeroize);
    hashed?;
    Ok(key)
}

/// An AES-256-GCM key (ring's), whose key schedule is zeroed when it is dropped.
pub(crate) struct GcmKey(std::mem::ManuallyDrop<LessSafeKey>);

impl GcmKey {
    fn new(key: &[u8; KEY_LEN]) -> GcmKey {
        // AES_256_GCM takes any 32 bytes.
        let unbound = UnboundKey::new(&AES_256_GCM, key).unwrap_or_else(|_| unreachable!());
        GcmKey(std::mem::ManuallyDrop::new(LessSafeKey::new(unbound)))
    }
}

impl Drop for GcmKey {
    fn drop(&mut self) {
        let key: &mut LessSafeKey = &mut self.0;
        // SAFETY: the bytes are those of the key, which this wrapper owns and never uses
        // again; ring's key is plain data (the AES key schedule and GHASH table, inline,
        // and a reference to a static), without a destructor, and `ManuallyDrop` keeps it
        // from being dropped after it is overwritten.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(
                (key as *mut LessSafeKey).cast::<u8>(),
                std::mem::size_of::<LessSafeKey>(),
            )
        };
        zeroize::Zeroize::zeroize(bytes);
    }
}

/// Bytes of cipher `cipher`'s nonce.
fn nonce_len(cipher: u32) -> usize {
    match cipher {
        crate::format::plaid::CIPHER_AES_256_GCM => 12,
        _ => 32,
    }
}

/// A plaid file's key, ready for its cipher.
pub(crate) enum FileKey {
    /// AES-256-GCM (ring's), its key schedule zeroed when dropped (boxed: it is large).
    Gcm(Box<GcmKey>),
    /// AEGIS-256X4 (libaegis), the key zeroed when dropped.
    Aegis(Key),
}

impl FileKey {
    /// Encrypt `bytes` in place with `nonce` (the cipher takes as many of its bytes as
    /// it uses) and associated data `aad`; the tag.
    fn seal(&self, nonce: &[u8; 32], aad: &[u8], bytes: &mut [u8]) -> [u8; TAG_LEN] {
        match self {
            FileKey::Gcm(key) => {
                let mut gcm = [0u8; 12];
                gcm.copy_from_slice(&nonce[..12]);
                let tag = key
                    .0
                    .seal_in_place_separate_tag(
                        GcmNonce::assume_unique_for_key(gcm),
                        Aad::from(aad),
                        bytes,
                    )
                    .unwrap_or_else(|_| unreachable!("a block under 64 GiB always seals"));
                let mut out = [0u8; TAG_LEN];
                out.copy_from_slice(tag.as_ref());
                out
            }
            FileKey::Aegis(key) => aegis::aegis256x4::Aegis256X4::<TAG_LEN>::new(key, nonce)
                .encrypt_in_place(bytes, aad),
        }
    }

    /// Authenticate and decrypt `src` into `dst` (as long) in one pass where the cipher
    /// can (AEGIS-256X4: libaegis's incremental decryptor, which keeps the plaintext out of
    /// reach until the tag checks); false (and unspecified bytes in `dst`) when the tag
    /// does not match.
    fn open_from(
        &self,
        nonce: &[u8; 32],
        aad: &[u8],
        tag: &[u8; TAG_LEN],
        src: &[u8],
        dst: &mut [u8],
    ) -> bool {
        match self {
            FileKey::Gcm(_) => {
                dst.copy_from_slice(src);
                self.open(nonce, aad, tag, dst)
            }
            FileKey::Aegis(key) => {
                let cipher = aegis::aegis256x4::Aegis256X4::<TAG_LEN>::new(key, nonce);
                let mut decryptor = cipher.decryptor(aad, dst);
                decryptor.update(src).is_ok() && decryptor.finalize(tag).is_ok()
            }
        }
    }

    /// Authenticate and decrypt `bytes` in place; false (and unspecified bytes) when the
    /// tag does not match.
    fn open(&self, nonce: &[u8; 32], aad: &[u8], tag: &[u8; TAG_LEN], bytes: &mut [u8]) -> bool {
        match self {
            FileKey::Gcm(key) => {
                let mut gcm = [0u8; 12];
                gcm.copy_from_slice(&nonce[..12]);
                key.0
                    .open_in_place_separate_tag(
                        GcmNonce::assume_unique_for_key(gcm),
                        Aad::from(aad),
                        ring::aead::Tag::from(*tag),
                        bytes,
                        0..,
                    )
                    .is_ok()
            }
            FileKey::Aegis(key) => aegis::aegis256x4::Aegis256X4::<TAG_LEN>::new(key, nonce)
                .decrypt_in_place(bytes, tag, aad)
                .is_ok(),
        }
    }
}

/// A plaid file's key: HKDF-SHA256 of the master key with the file's salt, the info
/// naming the cipher (RustCrypto's `hkdf`, whose SHA-256 is the one that checks
/// tensorizer's hashes).
fn file_key(master: &[u8; KEY_LEN], salt: &[u8; 32], cipher: u32) -> FileKey {
    let info: &[u8] = match cipher {
        crate::format::plaid::CIPHER_AES_256_GCM => b"plaid v1 AES-256-GCM file key",
        _ => b"plaid v1 AEGIS-256X4 file key",
    };
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    hkdf::Hkdf::<sha2::Sha256>::new(Some(salt), master)
        .expand(info, &mut key[..])
        .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 output"));
    match cipher {
        crate::format::plaid::CIPHER_AES_256_GCM => FileKey::Gcm(Box::new(GcmKey::new(&key))),
        _ => FileKey::Aegis(key),
    }
}

/// Block `block` of tensor `index`'s nonce: the file's base with the tensor's index XORed
/// into bytes 0..4 and the block's into bytes 4..12, little-endian.
fn block_nonce(base: &[u8; 32], index: u32, block: u64) -> [u8; 32] {
    let mut nonce = *base;
    for (n, b) in nonce
        .iter_mut()
        .zip(index.to_le_bytes().iter().chain(&block.to_le_bytes()))
    {
        *n ^= b;
    }
    nonce
}

/// The tag of the empty message under `key` with the key check's nonce and associated data.
fn key_check(key: &FileKey, base: &[u8; 32]) -> [u8; TAG_LEN] {
    key.seal(
        &block_nonce(base, u32::MAX, u64::MAX),
        KEY_CHECK_AAD,
        &mut [],
    )
}

/// The associated data of a tensor's blocks, with the block's offset at bytes 8..16 (set
/// per block): index, offset, length, dtype, rank, dimensions and name.
pub(crate) fn tensor_aad(
    index: usize,
    nbytes: u64,
    dtype: DType,
    shape: &[u64],
    name: &str,
) -> Vec<u8> {
    let mut aad = Vec::with_capacity(32 + 8 * shape.len() + name.len());
    aad.extend_from_slice(&(index as u64).to_le_bytes());
    aad.extend_from_slice(&0u64.to_le_bytes());
    aad.extend_from_slice(&nbytes.to_le_bytes());
    aad.extend_from_slice(&dtype.id().to_le_bytes());
    aad.extend_from_slice(&(shape.len() as u32).to_le_bytes());
    for d in shape {
        aad.extend_from_slice(&d.to_le_bytes());
    }
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// What a writer encrypts a plaid file with: its key and nonce base, and the header field
/// that records them.
pub(crate) struct Sealer {
    key: Arc<FileKey>,
    nonce_base: [u8; 32],
    /// The header's `encryption` field.
    pub(crate) header: proto::Encryption,
}

impl Sealer {
    /// Encrypt in place the blocks of tensor `index` (associated data `aad`, from
    /// [`tensor_aad`]) that `bytes` holds, from offset `at` (a multiple of `block_size`),
    /// writing each block's tag into `tags`.
    pub(crate) fn seal(
        &self,
        index: usize,
        aad: &[u8],
        block_size: u64,
        at: u64,
        bytes: &mut [u8],
        tags: &mut [[u8; TAG_LEN]],
    ) {
        let mut aad = aad.to_vec();
        for (k, (block, tag)) in bytes
            .chunks_mut(block_size as usize)
            .zip(tags.iter_mut())
            .enumerate()
        {
            let j = at / block_size + k as u64;
            aad[8..16].copy_from_slice(&(j * block_size).to_le_bytes());
            *tag = self
                .key
                .seal(&block_nonce(&self.nonce_base, index as u32, j), &aad, block);
        }
    }
}

/// A tensor's cipher, as its decrypt stage holds it.
#[derive(Clone)]
enum Cipher {
    /// tensorizer's chunks: XSalsa20-Poly1305, nonce counting up from `nonce`.
    Secretbox {
        cipher: XSalsa20Poly1305,
        nonce: [u8; 24],
        macs: Arc<[[u8; 16]]>,
    },
    /// plaid's blocks: AEGIS-256X4 or AES-256-GCM under the file's key.
    Plaid {
        key: Arc<FileKey>,
        nonce_base: [u8; 32],
        index: u32,
        tags: Arc<[[u8; TAG_LEN]]>,
        aad: Vec<u8>,
    },
}

impl Cipher {
    /// Authenticate and decrypt chunk `i` (of `size` bytes each) into `chunk`: from `src`
    /// (plaid's blocks only), or in place without it. False when it fails authentication.
    fn open(&mut self, i: u64, size: u64, src: Option<&[u8]>, chunk: &mut [u8]) -> bool {
        match self {
            Cipher::Secretbox {
                cipher,
                nonce,
                macs,
            } => {
                src.is_none()
                    && macs.get(i as usize).is_some_and(|mac| {
                        let nonce = Decrypt::nonce(nonce, i);
                        let (nonce, tag) = (Nonce::from_slice(&nonce), Tag::from_slice(mac));
                        cipher
                            .decrypt_in_place_detached(nonce, b"", chunk, tag)
                            .is_ok()
                    })
            }
            Cipher::Plaid {
                key,
                nonce_base,
                index,
                tags,
                aad,
            } => tags.get(i as usize).is_some_and(|tag| {
                aad[8..16].copy_from_slice(&(i * size).to_le_bytes());
                let nonce = block_nonce(nonce_base, *index, i);
                match src {
                    Some(src) => key.open_from(&nonce, aad, tag, src, chunk),
                    None => key.open(&nonce, aad, tag, chunk),
                }
            }),
        }
    }
}

/// The decrypt stage of one tensor's job: each whole chunk (tensorizer's) or block
/// (plaid's) authenticated and decrypted in place as it passes (the pipeline feeds it
/// whole chunks, the last one shorter).
#[derive(Clone)]
pub(crate) struct Decrypt {
    cipher: Cipher,
    chunk_size: u64,
    /// The tensor's offset in the file, for messages.
    base: u64,
    file: Arc<str>,
    tensor: Arc<str>,
}

impl Decrypt {
    /// The stage for `tensor` of `file`, or `None` for a tensor stored in the clear (which
    /// key material refuses unless plaintext is allowed: [`Secret::check_clear`]).
    pub(crate) fn of(file: &str, tensor: &TensorInfo, secret: &Secret) -> Result<Option<Decrypt>> {
        secret.check_clear(file, tensor)?;
        let Some(encryption) = tensor.encryption.as_deref() else {
            return Ok(None);
        };
        if tensor.zero_fill {
            return Ok(None);
        }
        let (cipher, chunk_size) = match encryption {
            Encryption::Tensorizer {
                chunk_size,
                nonce,
                macs,
                kdf,
            } => {
                let key = secret.key_for(file, tensor, kdf.as_ref())?;
                let cipher = Cipher::Secretbox {
                    cipher: XSalsa20Poly1305::new(key[..].into()),
                    nonce: *nonce,
                    macs: macs.iter().copied().collect(),
                };
                (cipher, *chunk_size)
            }
            Encryption::Plaid {
                block_size,
                position,
                tags,
                file: plaid,
            } => {
                let key = secret.file_key_for(file, tensor, plaid)?;
                let cipher = Cipher::Plaid {
                    key,
                    nonce_base: plaid.nonce_base,
                    index: *position,
                    tags: tags.iter().copied().collect(),
                    aad: tensor_aad(
                        *position as usize,
                        tensor.nbytes,
                        tensor.dtype,
                        &tensor.shape,
                        &tensor.name,
                    ),
                };
                (cipher, *block_size)
            }
        };
        Ok(Some(Decrypt {
            cipher,
            chunk_size,
            base: tensor.offset,
            file: file.into(),
            tensor: tensor.name.as_str().into(),
        }))
    }

    /// The stages of a load, by tensor index (empty where nothing is encrypted): each
    /// encrypted tensor's key found (or derived) before anything is read, so that a missing
    /// key fails the load here; key material refuses a tensor stored in the clear here too
    /// (unless plaintext is allowed). With `stored_only` (verification without key
    /// material), plaid's encrypted tensors are checked as stored: their CRCs cover the
    /// stored bytes (tensorizer's hashes need the plaintext).
    pub(crate) fn for_load<'t>(
        file: &str,
        tensors: impl IntoIterator<Item = &'t TensorInfo>,
        count: usize,
        secret: &Secret,
        stored_only: bool,
    ) -> Result<Vec<Option<Decrypt>>> {
        let mut stages = Vec::new();
        for t in tensors {
            if stored_only && matches!(t.encryption.as_deref(), Some(Encryption::Plaid { .. })) {
                continue;
            }
            if let Some(stage) = Decrypt::of(file, t, secret)? {
                if stages.is_empty() {
                    stages.resize_with(count, || None);
                }
                stages[t.index] = Some(stage);
            }
        }
        Ok(stages)
    }

    /// The `buf.len()` plaintext bytes of `tensor` from `offset` on, read from `source`:
    /// the whole chunks around them authenticated and decrypted.
    pub(crate) fn read(
        &mut self,
        source: &dyn crate::source::Source,
        tensor: &TensorInfo,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let unit = self.unit();
        let start = offset / unit * unit;
        let end = (offset + buf.len() as u64)
            .div_ceil(unit)
            .saturating_mul(unit)
            .min(tensor.nbytes);
        let mut chunks =
            crate::error::zeroed(end - start, format_args!("tensor '{}'", tensor.name))?;
        crate::source::read_exact(source, tensor.offset + start, &mut chunks)
            .map_err(|e| e.in_tensor(&tensor.name))?;
        self.apply(start, &mut chunks)?;
        let from = (offset - start) as usize;
        buf.copy_from_slice(&chunks[from..from + buf.len()]);
        Ok(())
    }

    /// Whether the file's checksums cover the plaintext (tensorizer's hashes), so that
    /// decryption comes before verification; plaid's CRCs cover the stored bytes, checked
    /// before decryption.
    pub(crate) fn before_verification(&self) -> bool {
        matches!(self.cipher, Cipher::Secretbox { .. })
    }

    /// Chunk `i`'s nonce: the first plus `i`, as a little-endian integer (libsodium's
    /// `sodium_increment`, `i` times).
    fn nonce(first: &[u8; 24], i: u64) -> [u8; 24] {
        let mut nonce = *first;
        let mut carry = u128::from(i);
        for byte in nonce.iter_mut() {
            if carry == 0 {
                break;
            }
            let sum = u128::from(*byte) + (carry & 0xff);
            *byte = sum as u8;
            carry = (carry >> 8) + (sum >> 8);
        }
        nonce
    }
}

impl Decrypt {
    /// Authenticate and decrypt the whole chunks (the last one shorter) of the stored bytes
    /// from offset `at` on: `open(chunk index, chunk's range in the piece)` decrypts one.
    /// A chunk that fails is zeroed in `out` and reported, naming the tensor, the chunk and
    /// its file offset.
    fn chunks(
        &mut self,
        at: u64,
        len: usize,
        out: &mut [u8],
        open: &mut OpenChunk<'_>,
    ) -> Result<()> {
        if !at.is_multiple_of(self.chunk_size) {
            return Err(Error::invalid(format!(
                "{}: tensor '{}': decryption fed at offset {at}, inside a chunk (a bug in plaid)",
                self.file, self.tensor
            )));
        }
        let size = self.chunk_size as usize;
        for k in 0..len.div_ceil(size) {
            let range = k * size..((k + 1) * size).min(len);
            let i = at / self.chunk_size + k as u64;
            if open(&mut self.cipher, i, range.clone(), &mut out[range.clone()]) {
                continue;
            }
            // Nothing of a chunk that failed is handed out.
            out[range.clone()].fill(0);
            let start = i * self.chunk_size;
            let end = start + range.len() as u64;
            let (what, why) = match self.cipher {
                Cipher::Secretbox { .. } => (
                    "chunk",
                    "a wrong key or passphrase, or damaged ciphertext",
                ),
                Cipher::Plaid { .. } => (
                    "block",
                    "the key is right (the file's key check passes), so the block was damaged or moved from elsewhere",
                ),
            };
            return Err(Error::Decrypt(format!(
                "{}: tensor '{}': {what} {i} (its bytes {start}..{end}, file offset {}) fails authentication: {why}",
                self.file,
                self.tensor,
                self.base + start
            )));
        }
        Ok(())
    }
}

impl Transform for Decrypt {
    fn apply(&mut self, at: u64, bytes: &mut [u8]) -> Result<()> {
        let size = self.chunk_size;
        self.chunks(at, bytes.len(), bytes, &mut |cipher, i, _, chunk| {
            cipher.open(i, size, None, chunk)
        })
    }

    fn apply_from(&mut self, at: u64, src: &[u8], dst: &mut [u8]) -> Result<()> {
        if matches!(self.cipher, Cipher::Secretbox { .. }) {
            dst.copy_from_slice(src);
            return self.apply(at, dst);
        }
        let size = self.chunk_size;
        self.chunks(at, src.len(), dst, &mut |cipher, i, range, chunk| {
            cipher.open(i, size, Some(&src[range]), chunk)
        })
    }

    fn boxed_clone(&self) -> Box<dyn Transform> {
        Box::new(self.clone())
    }

    fn unit(&self) -> u64 {
        self.chunk_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_zeroed_where_they_lay_when_dropped() {
        use std::mem::ManuallyDrop;
        // A raw key in read options (the same `Key` holds derived and AEGIS file keys).
        let mut secret = Secret::default();
        secret.set_key(Some(&[0x5a; KEY_LEN])).unwrap();
        let mut slot = ManuallyDrop::new(secret);
        let Some(Material::Key(key)) = &slot.material else {
            panic!("the key is set");
        };
        let at = key.as_ptr();
        // SAFETY: `at` points at the key's 32 bytes inside `slot`, which stays allocated
        // until the end of this test; dropping in place (once, never used after) leaves
        // them written by the zeroing, so reading them back reads initialized bytes.
        let after = unsafe {
            ManuallyDrop::drop(&mut slot);
            std::ptr::read(at.cast::<[u8; KEY_LEN]>())
        };
        assert_eq!(after, [0; KEY_LEN]);

        // An AES-256-GCM key schedule (ring's), zeroed by plaid's own `Drop`.
        let mut slot = ManuallyDrop::new(GcmKey::new(&[0x5a; KEY_LEN]));
        let at = (&*slot.0 as *const LessSafeKey).cast::<u8>();
        let size = std::mem::size_of::<LessSafeKey>();
        // SAFETY: as above: the schedule's bytes lie inside `slot`, and `GcmKey`'s drop
        // writes every one of them, so each is initialized when read back.
        let after = unsafe {
            ManuallyDrop::drop(&mut slot);
            std::slice::from_raw_parts(at, size).to_vec()
        };
        assert!(after.iter().all(|&b| b == 0), "the key schedule is wiped");
    }

    #[test]
    fn nonces_count_up_as_little_endian_integers() {
        assert_eq!(Decrypt::nonce(&[0xff; 24], 1), [0; 24], "wraps around");
        let mut first = [0u8; 24];
        first[0] = 0xfe;
        let n = Decrypt::nonce(&first, 3);
        assert_eq!((n[0], n[1], n[2]), (0x01, 0x01, 0));
        let n = Decrypt::nonce(&first, 0x1_0000);
        assert_eq!((n[0], n[1], n[2]), (0xfe, 0, 1));
    }

    #[test]
    fn block_nonces_put_the_tensor_and_block_in_their_places() {
        let base = [0x11u8; 32];
        let n = block_nonce(&base, 0x0403_0201, 0x0c0b_0a09_0807_0605);
        let mut expected = base;
        for (e, x) in expected.iter_mut().zip(1u8..=12) {
            *e ^= x;
        }
        assert_eq!(n, expected);
    }

    #[test]
    fn sealed_blocks_open_only_in_their_place() {
        for cipher in [1, 2] {
            sealed_blocks_open_only_in_their_place_with(cipher);
        }
    }

    fn sealed_blocks_open_only_in_their_place_with(cipher: u32) {
        let mut secret = Secret::default();
        secret.set_key(Some(&[7u8; 32])).unwrap();
        let sealer = secret.sealer(cipher, 1, MIN_KDF_MEMORY).unwrap().unwrap();
        let aad = tensor_aad(3, 10_000, DType::U8, &[10_000], "w");
        let plain: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut sealed = plain.clone();
        let mut tags = vec![[0u8; TAG_LEN]; 3];
        sealer.seal(3, &aad, 4096, 0, &mut sealed, &mut tags);
        assert_ne!(sealed, plain);
        let key = sealer.key.clone();
        let stage = |index: u32, tags: Vec<[u8; TAG_LEN]>| Decrypt {
            cipher: Cipher::Plaid {
                key: key.clone(),
                nonce_base: sealer.nonce_base,
                index,
                tags: tags.into(),
                aad: tensor_aad(index as usize, 10_000, DType::U8, &[10_000], "w"),
            },
            chunk_size: 4096,
            base: 0,
            file: "f".into(),
            tensor: "w".into(),
        };
        let mut opened = sealed.clone();
        stage(3, tags.clone()).apply(0, &mut opened).unwrap();
        assert_eq!(opened, plain);
        // The second block alone, from its offset.
        let mut second = sealed[4096..8192].to_vec();
        stage(3, tags.clone()).apply(4096, &mut second).unwrap();
        assert_eq!(second, plain[4096..8192]);
        // Swapped blocks (with their tags), another tensor's index: refused, zeroed.
        let mut swapped = sealed.clone();
        swapped[..8192].rotate_left(4096);
        let mut swapped_tags = tags.clone();
        swapped_tags.swap(0, 1);
        let e = stage(3, swapped_tags).apply(0, &mut swapped).unwrap_err();
        assert!(matches!(e, Error::Decrypt(_)), "{e}");
        assert!(swapped[..4096].iter().all(|&b| b == 0));
        let mut moved = sealed.clone();
        assert!(stage(4, tags).apply(0, &mut moved).is_err());
    }
}
