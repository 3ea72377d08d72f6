//! Keys and decryption: the key material of the read options (a raw key or a passphrase,
//! zeroed when dropped), keys derived from a passphrase as libsodium's `crypto_pwhash`
//! derives them (cached per salt and limits), and the decrypt stage of tensorizer's
//! XSalsa20-Poly1305 chunks (`crypto_secretbox`, from RustCrypto's crates).

use std::sync::Arc;

use crypto_secretbox::aead::{AeadInPlace, KeyInit};
use crypto_secretbox::{Nonce, Tag, XSalsa20Poly1305};
use parking_lot::Mutex;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::format::{Encryption, Kdf, TensorInfo};
use crate::pipeline::Transform;

/// Bytes of a key.
pub(crate) const KEY_LEN: usize = 32;
/// The most memory a key derivation named by a file may take (tensorizer's strongest preset,
/// `SENSITIVE`, takes 1 GiB): a hostile file cannot make plaid allocate more.
pub(crate) const MAX_KDF_MEMORY: u64 = 4 << 30;
/// The most passes a key derivation named by a file may take (tensorizer's presets take 1
/// to 4).
pub(crate) const MAX_KDF_PASSES: u64 = 64;

type Key = Zeroizing<[u8; KEY_LEN]>;

/// What decrypts: a raw key or a passphrase.
#[derive(Clone)]
enum Material {
    Key(Key),
    Passphrase(Zeroizing<Vec<u8>>),
}

/// The key material of read options, and the keys derived from a passphrase so far (shared
/// by clones of the options, so each salt and limits are derived once). Every copy of a key
/// or passphrase is zeroed when dropped.
#[derive(Clone, Default)]
pub(crate) struct Secret {
    material: Option<Material>,
    derived: Arc<Mutex<Vec<(Kdf, Key)>>>,
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
        match (&self.material, &other.material) {
            (None, None) => true,
            (Some(Material::Key(a)), Some(Material::Key(b))) => a[..] == b[..],
            (Some(Material::Passphrase(a)), Some(Material::Passphrase(b))) => a[..] == b[..],
            _ => false,
        }
    }
}

impl Eq for Secret {}

impl Secret {
    /// Use `key` (32 bytes); `None` clears the key material.
    pub(crate) fn set_key(&mut self, key: Option<&[u8]>) -> Result<()> {
        // Keys derived so far belong to the old material (and to the deserializers that
        // share them): start afresh.
        self.derived = Arc::default();
        let Some(key) = key else {
            self.material = None;
            return Ok(());
        };
        if let Some(Material::Passphrase(_)) = self.material {
            return Err(Error::invalid(
                "a key and a passphrase: give one (clear the passphrase first)",
            ));
        }
        let key: [u8; KEY_LEN] = key
            .try_into()
            .map_err(|_| Error::invalid(format!("a key is {KEY_LEN} bytes, not {}", key.len())))?;
        self.material = Some(Material::Key(Zeroizing::new(key)));
        Ok(())
    }

    /// Use `passphrase` (any bytes); `None` clears the key material.
    pub(crate) fn set_passphrase(&mut self, passphrase: Option<&[u8]>) -> Result<()> {
        self.derived = Arc::default();
        let Some(passphrase) = passphrase else {
            self.material = None;
            return Ok(());
        };
        if let Some(Material::Key(_)) = self.material {
            return Err(Error::invalid(
                "a key and a passphrase: give one (clear the key first)",
            ));
        }
        self.material = Some(Material::Passphrase(Zeroizing::new(passphrase.to_vec())));
        Ok(())
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
                let key = derive(passphrase, kdf).map_err(|why| {
                    Error::format(
                        file,
                        tensor.offset,
                        format!("tensor '{name}': its key derivation cannot run: {why}"),
                    )
                })?;
                derived.push((kdf.clone(), key.clone()));
                Ok(key)
            }
        }
    }
}

/// libsodium's `crypto_pwhash(out, 32, passphrase, salt, opslimit, memlimit,
/// crypto_pwhash_ALG_ARGON2ID13)`: Argon2id v1.3, one lane, `memlimit / 1024` KiB.
fn derive(passphrase: &[u8], kdf: &Kdf) -> std::result::Result<Key, String> {
    if kdf.memlimit > MAX_KDF_MEMORY || kdf.opslimit > MAX_KDF_PASSES {
        return Err(format!(
            "{} passes over {} bytes, past plaid's limits ({MAX_KDF_PASSES} passes, {MAX_KDF_MEMORY} bytes)",
            kdf.opslimit, kdf.memlimit
        ));
    }
    let params = argon2::Params::new(
        (kdf.memlimit / 1024) as u32,
        kdf.opslimit as u32,
        1,
        Some(KEY_LEN),
    )
    .map_err(|e| e.to_string())?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    argon
        .hash_password_into(passphrase, &kdf.salt, &mut key[..])
        .map_err(|e| e.to_string())?;
    Ok(key)
}

/// The decrypt stage of one tensor's job: each whole chunk authenticated and decrypted in
/// place as it passes (the pipeline feeds it whole chunks, the last one shorter).
#[derive(Clone)]
pub(crate) struct Decrypt {
    cipher: XSalsa20Poly1305,
    chunk_size: u64,
    nonce: [u8; 24],
    macs: Arc<[[u8; 16]]>,
    file: Arc<str>,
    tensor: Arc<str>,
}

impl Decrypt {
    /// The stage for `tensor` of `file`, or `None` for a tensor stored in the clear.
    pub(crate) fn of(file: &str, tensor: &TensorInfo, secret: &Secret) -> Result<Option<Decrypt>> {
        let Some(encryption) = tensor.encryption.as_deref() else {
            return Ok(None);
        };
        if tensor.zero_fill {
            return Ok(None);
        }
        match encryption {
            Encryption::Tensorizer {
                chunk_size,
                nonce,
                macs,
                kdf,
            } => {
                let key = secret.key_for(file, tensor, kdf.as_ref())?;
                Ok(Some(Decrypt {
                    cipher: XSalsa20Poly1305::new(key[..].into()),
                    chunk_size: *chunk_size,
                    nonce: *nonce,
                    macs: macs.iter().copied().collect(),
                    file: file.into(),
                    tensor: tensor.name.as_str().into(),
                }))
            }
        }
    }

    /// Chunk `i`'s nonce: the first plus `i`, as a little-endian integer (libsodium's
    /// `sodium_increment`, `i` times).
    fn nonce(&self, i: u64) -> [u8; 24] {
        let mut nonce = self.nonce;
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

impl Transform for Decrypt {
    fn apply(&mut self, at: u64, bytes: &mut [u8]) -> Result<()> {
        if !at.is_multiple_of(self.chunk_size) {
            return Err(Error::invalid(format!(
                "{}: tensor '{}': decryption fed at offset {at}, inside a chunk (a bug in plaid)",
                self.file, self.tensor
            )));
        }
        for (k, chunk) in bytes.chunks_mut(self.chunk_size as usize).enumerate() {
            let i = at / self.chunk_size + k as u64;
            let start = i * self.chunk_size;
            let end = start + chunk.len() as u64;
            let failed = || {
                Error::Decrypt(format!(
                    "{}: tensor '{}': chunk {i} (its bytes {start}..{end}) fails authentication: a wrong key or passphrase, or damaged ciphertext",
                    self.file, self.tensor
                ))
            };
            let mac = self.macs.get(i as usize).ok_or_else(failed)?;
            let nonce = self.nonce(i);
            self.cipher
                .decrypt_in_place_detached(
                    Nonce::from_slice(&nonce),
                    b"",
                    chunk,
                    Tag::from_slice(mac),
                )
                .map_err(|_| failed())?;
        }
        Ok(())
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
    fn nonces_count_up_as_little_endian_integers() {
        let d = Decrypt {
            cipher: XSalsa20Poly1305::new(&[0u8; 32].into()),
            chunk_size: 64,
            nonce: [0xff; 24],
            macs: Arc::from(Vec::new()),
            file: "f".into(),
            tensor: "t".into(),
        };
        assert_eq!(d.nonce(1), [0; 24], "wraps around");
        let mut d = d;
        d.nonce = [0; 24];
        d.nonce[0] = 0xfe;
        let n = d.nonce(3);
        assert_eq!((n[0], n[1], n[2]), (0x01, 0x01, 0));
        let n = d.nonce(0x1_0000);
        assert_eq!((n[0], n[1], n[2]), (0xfe, 0, 1));
    }
}
