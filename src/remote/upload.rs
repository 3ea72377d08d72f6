//! Writing one object with a multipart upload: the bytes are cut into parts that go out in
//! parallel (a bounded number at once) while the caller produces the rest; the object
//! appears only when [`Upload::finish`] completes the upload. An upload that fails, or is
//! dropped unfinished, is aborted: the store keeps no object and no parts.

use std::sync::Arc;

use object_store::{ObjectStoreExt, WriteMultipart};

use super::StorageOptions;
use super::{errors, Client, Location};
use crate::error::{Error, Result};

/// An object being written.
pub struct Upload {
    client: Arc<Client>,
    location: Location,
    /// The upload in progress; `None` once finished or aborted.
    parts: Option<WriteMultipart>,
    written: u64,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("url", &self.location.url)
            .field("written", &self.written)
            .finish()
    }
}

impl Upload {
    /// Start writing the object at `url` (the upload is created now, so bad credentials or
    /// a missing bucket fail here rather than at the end).
    pub fn create(url: &str, storage: &StorageOptions) -> Result<Upload> {
        let location = super::Location::parse(url)?;
        if location.scheme == super::Scheme::Http {
            return Err(Error::Unsupported(format!(
                "{url}: plain HTTP servers cannot be written to; write to s3://, gs:// or az://"
            )));
        }
        let client = Client::new(&location, storage)?;
        let path = location.path.clone();
        let part_size = client.settings.part_size as usize;
        let parts = client
            .run(|store| async move { Ok(store.put_multipart(&path).await) })?
            .map_err(|e| errors::describe(e, &location.url, None, "starting an upload to"))?;
        Ok(Upload {
            client,
            location,
            parts: Some(WriteMultipart::new_with_chunk_size(parts, part_size)),
            written: 0,
        })
    }

    /// The URL being written.
    pub fn url(&self) -> &str {
        &self.location.url
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Append `bytes`, waiting while the most parts allowed are on their way.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let in_flight = self.client.settings.parts_in_flight;
        let Some(parts) = self.parts.as_mut() else {
            return Err(Error::invalid(format!(
                "{}: the upload is already finished",
                self.location.url
            )));
        };
        let at = self.written;
        let result = self.client.run(|_| async move {
            // A part is cut every part size; wait first so that at most `in_flight` parts
            // (and the one being filled) are held at once.
            if let Err(e) = parts.wait_for_capacity(in_flight).await {
                return Ok(Err(e));
            }
            parts.write(bytes);
            Ok(Ok(()))
        });
        let outcome = match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(errors::describe(
                e,
                &self.location.url,
                Some(&(at..at + bytes.len() as u64)),
                "uploading",
            )),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                self.written += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.abort_quietly();
                Err(e)
            }
        }
    }

    /// Send what is left and complete the upload: the object appears now, whole.
    pub fn finish(mut self) -> Result<()> {
        let Some(parts) = self.parts.take() else {
            return Err(Error::invalid(format!(
                "{}: the upload is already finished",
                self.location.url
            )));
        };
        let finished = self
            .client
            .run(|_| async move { Ok(parts.finish().await) })?;
        finished
            .map(drop)
            .map_err(|e| errors::describe(e, &self.location.url, None, "completing the upload of"))
    }

    /// Abort the upload: the store keeps nothing of it.
    pub fn abort(mut self) -> Result<()> {
        match self.parts.take() {
            Some(parts) => self
                .client
                .run(|_| async move { Ok(parts.abort().await) })?
                .map_err(|e| {
                    errors::describe(e, &self.location.url, None, "aborting the upload of")
                }),
            None => Ok(()),
        }
    }

    fn abort_quietly(&mut self) {
        if let Some(parts) = self.parts.take() {
            let _ = self.client.run(|_| async move { Ok(parts.abort().await) });
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        self.abort_quietly();
    }
}

/// Delete the object at `url` (a conversion whose check failed after the upload).
pub(crate) fn delete(url: &str, storage: &StorageOptions) -> Result<()> {
    let location = Location::parse(url)?;
    let client = Client::new(&location, storage)?;
    let path = location.path.clone();
    client
        .run(|store| async move { Ok(store.delete(&path).await) })?
        .map_err(|e| errors::describe(e, url, None, "deleting"))
}

impl std::io::Write for Upload {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Upload::write(self, buf).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
