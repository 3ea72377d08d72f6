//! The settings of remote storage: key/value pairs, checked as they are set.

#[cfg(not(feature = "remote"))]
use crate::error::Error;
use crate::error::Result;

/// Configuration of remote storage (`s3://`, `gs://`, `az://`, `http(s)://`), as
/// `object_store`-style key/value pairs (`aws_region`, `aws_endpoint`, `timeout`,
/// `google_service_account`, `azure_storage_account_name`, ...) and a few of plaid's own
/// (`max_retries`, `retry_timeout`, `aws_profile`, `aws_ca_bundle`, `upload_part_size`,
/// `upload_parts_in_flight`). Values set here take precedence over the environment. Keys are
/// checked when set; values when a URL is opened. `Debug` never shows a value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StorageOptions {
    pairs: Vec<(String, String)>,
}

impl std::fmt::Debug for StorageOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.pairs.iter().map(|(k, _)| k))
            .finish()
    }
}

impl StorageOptions {
    /// Set `key` to `value`, replacing an earlier value of the same key. An unknown key is
    /// [`crate::Error::InvalidArgument`] naming it; in a build without remote storage every key is
    /// [`crate::Error::Unsupported`].
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let key = key.trim().to_ascii_lowercase();
        check_storage_key(&key)?;
        match self.pairs.iter_mut().find(|(k, _)| *k == key) {
            Some(pair) => pair.1 = value.to_owned(),
            None => self.pairs.push((key, value.to_owned())),
        }
        Ok(())
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every key and value, in the order first set.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

#[cfg(feature = "remote")]
fn check_storage_key(key: &str) -> Result<()> {
    super::config::check_key(key)
}

#[cfg(not(feature = "remote"))]
fn check_storage_key(key: &str) -> Result<()> {
    Err(Error::Unsupported(format!(
        "storage option '{key}': this build of plaid has no remote storage (the `remote` feature is off)"
    )))
}
